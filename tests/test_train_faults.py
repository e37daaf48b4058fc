"""Crash safety and clear errors: SIGKILL at random moments (also mid-checkpoint) loses
nothing since the last checkpoint and resume ends where an uninterrupted run ends; SIGTERM
and SIGINT save; a checkpoint that cannot be written is a one-line error that leaves the
previous one intact; non-finite losses stop or are skipped; bad corpora are named."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import ROOT, log_rows, run_command as run
from checkpoint import read_arrays as read_npz
from model import Model


TINY = ["--embed_size=8", "--hidden_size=16", "--batch_size=8", "--eval_exact_match=0", "--num_samples=0",
        "--max_minutes=0", "--learning_rate=0.01", "--min_lr=0.01", "--warmup_iters=0"]


def train_cmd(data, out, *extra):
    return [sys.executable, os.path.join(ROOT, "train.py"), f"--dataset={data}", f"--out_dir={out}", *TINY, *extra]


@pytest.fixture
def data(tiny_reverse):
    return tiny_reverse


def params_of(path):
    arrays = read_npz(path)
    return {k: v for k, v in arrays.items() if k.startswith(("param/", "opt/"))}


def test_sigkill_at_random_moments_loses_nothing_since_the_last_checkpoint(data, tmp_path):
    steps = 10
    reference = tmp_path / "reference"
    run(train_cmd(data, reference, f"--max_iters={steps}", "--eval_interval=1"))
    out = tmp_path / "killed"
    # Every step is checkpointed, and each checkpoint write pauses 0.3 s between writing the
    # temp file and renaming it, so random kills often land in the middle of a write.
    env = dict(os.environ, SEQ2SEQ_TEST_SLOW_SAVE="0.3")
    rng = np.random.default_rng(0)
    kills, steps_seen = 0, []
    for attempt in range(3):
        resume = ["--init_from=resume"] if (out / "ckpt_latest.npz").exists() else []
        job = subprocess.Popen(train_cmd(data, out, f"--max_iters={steps}", "--eval_interval=1", *resume),
                               cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Wait for the first checkpoint of this attempt (compilation comes first), then a bit.
        before = os.path.getmtime(out / "ckpt_latest.npz") if resume else 0.0
        deadline = time.time() + 120
        while job.poll() is None and time.time() < deadline:
            if (out / "ckpt_latest.npz").exists() and os.path.getmtime(out / "ckpt_latest.npz") > before:
                break
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.8))
        if job.poll() is not None:
            break  # finished before we could kill it
        job.send_signal(signal.SIGKILL)
        job.wait()
        kills += 1
        model = Model.load(out / "ckpt_latest.npz")  # every kill leaves a loadable checkpoint
        steps_seen.append(model.checkpoint_state["step"])
    assert kills >= 2, f"only {kills} kills landed"
    assert steps_seen == sorted(steps_seen) and steps_seen[-1] < steps
    run(train_cmd(data, out, f"--max_iters={steps}", "--eval_interval=1", "--init_from=resume"))
    a, b = params_of(reference / "ckpt_latest.npz"), params_of(out / "ckpt_latest.npz")
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    logged = [json.loads(line)["step"] for line in open(out / "log.jsonl")]
    assert logged == list(range(1, steps + 1))  # no evaluation lost or repeated


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_save_and_exit_zero(data, tmp_path, sig):
    out = tmp_path / "run"
    job = subprocess.Popen(train_cmd(data, out, "--max_iters=100000", "--eval_interval=2"), cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "ckpt_latest.npz").exists():  # in the loop
        time.sleep(0.1)
    time.sleep(0.5)
    job.send_signal(sig)
    output, _ = job.communicate(timeout=120)
    assert job.returncode == 0, output
    step = Model.load(out / "ckpt_latest.npz").checkpoint_state["step"]
    assert step > 0 and f"interrupted at step {step}" in output


def test_unwritable_checkpoint_is_one_line_error_and_keeps_the_previous_one(data, tmp_path):
    out = tmp_path / "run"
    run(train_cmd(data, out, "--max_iters=2", "--eval_interval=2"))
    os.remove(out / "ckpt_latest.npz")
    os.mkdir(out / "ckpt_latest.npz")  # a folder where the file goes: the rename must fail
    proc = run(train_cmd(data, out, "--max_iters=4", "--eval_interval=2", "--overwrite=true"), check=False)
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert proc.returncode != 0 and len(errors) == 1, proc.stderr  # one line, no traceback
    assert errors[0].startswith("error: cannot write") and "ckpt_latest.npz" in errors[0]
    assert "Traceback" not in proc.stderr
    assert not [f for f in os.listdir(out) if f.startswith(".tmp-")]  # no temp file left behind


def test_nonfinite_loss_stops_naming_the_step_or_is_skipped(data, tmp_path):
    blow_up = ["--learning_rate=3e38", "--min_lr=3e38", "--grad_clip=0", "--optimizer=sgd"]  # overflows
    proc = run(train_cmd(data, tmp_path / "new", "--max_iters=20", "--eval_interval=1", *blow_up), check=False)
    assert proc.returncode != 0
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith("error: step ") and message.endswith("stopping. No checkpoint was written"), message
    assert not [f for f in os.listdir(tmp_path / "new") if f.endswith(".npz")]
    # A good run, then resumed with the blow-up: its checkpoints and log stay as they were.
    out = tmp_path / "stop"
    run(train_cmd(data, out, "--max_iters=2", "--eval_interval=1", "--optimizer=sgd"))
    before = {name: (out / name).read_bytes() for name in ("ckpt_latest.npz", "ckpt_best.npz", "log.jsonl")}
    proc = run(train_cmd(data, out, "--max_iters=20", "--init_from=resume", *blow_up), check=False)
    message = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode != 0 and message.startswith("error: step "), proc.stderr
    assert message.endswith(f"Last good checkpoint: {out / 'ckpt_latest.npz'}"), message
    assert {name: (out / name).read_bytes() for name in before} == before
    assert Model.load(out / "ckpt_latest.npz").checkpoint_state["step"] == 2
    # skip_nonfinite: a NaN word vector (injected at start) poisons exactly the training
    # batches whose source holds that word; those are skipped and counted, the others train.
    # Val sources never hold it, so evaluations stay finite and checkpoints are written.
    clean = without_word_in_val_sources(data, tmp_path / "clean", word=4)
    out = tmp_path / "skip"
    env = dict(os.environ, SEQ2SEQ_TEST_POISON="src_embed.W:4")
    proc = run(train_cmd(clean, out, "--max_iters=12", "--eval_interval=12", "--batch_size=1",
                         "--skip_nonfinite=true"), env=env, check=False)
    last = log_rows(out)[-1]
    assert last["step"] == 12 and last["skipped_nonfinite"] > 0 and np.isfinite(last["val_loss"])
    # ... but the NaN row is still in the weights, so no checkpoint may hold them.
    assert proc.returncode != 0 and proc.stderr.strip().splitlines()[-1] == (
        f"error: {out / 'ckpt_best.npz'}: not written: param/src_embed.W hold NaN or inf; "
        "the checkpoint already there, if any, is unchanged")
    assert not [f for f in os.listdir(out) if f.endswith(".npz")]
    # Blown-up weights make every batch non-finite: that stops after 20 in a row.
    proc = run(train_cmd(data, tmp_path / "diverged", "--max_iters=60", "--eval_interval=100",
                         "--skip_nonfinite=true", *blow_up), check=False)
    assert proc.returncode != 0 and "20 batches in a row" in proc.stderr


def without_word_in_val_sources(data, folder, word):
    """A copy of a prepared dataset whose val pairs never have `word` in the source."""
    from dataset import load_dataset, reseal, save_split

    os.makedirs(folder)
    _, _, _, splits = load_dataset(str(data))
    for name, pairs in splits.items():
        keep = [p for p in pairs if name != "val" or word not in p[0]]
        save_split(os.path.join(folder, f"{name}.npz"), keep)
    with open(os.path.join(data, "meta.json"), encoding="utf-8") as f:
        meta = f.read()
    with open(os.path.join(folder, "meta.json"), "w", encoding="utf-8") as f:
        f.write(meta)
    reseal(folder)
    return str(folder)


# ---- bad corpora and inputs -------------------------------------------------------------


@pytest.mark.parametrize("setting", ["--learning_rate=inf", "--grad_clip=nan", "--dropout=nan", "--min_lr=-inf"])
def test_nonfinite_settings_are_one_line_errors(setting):
    from configurator import ConfigError, configure
    from model import ModelConfig
    from train import TrainConfig, check

    cfg, mcfg = TrainConfig(), ModelConfig()
    configure([cfg, mcfg], [setting], "")
    with pytest.raises(ConfigError, match=f"{setting[2:].split('=')[0]}=.*must be a finite number"):
        check(cfg, mcfg)


# ---- a good run is never replaced by a worse one ----------------------------------------


def one_line_error(proc):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    return lines[-1]


@pytest.fixture(scope="module")
def finished_run(tiny_reverse, tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    run(train_cmd(tiny_reverse, out, "--max_iters=2", "--eval_interval=1"))
    return out


def snapshot(folder):
    """Every file's bytes but the lock's (which holds the pid of its last holder)."""
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))
            if (folder / name).is_file() and name != ".lock"}


def test_scratch_run_refuses_a_folder_holding_a_run_and_the_lock_refuses_a_second_writer(data, finished_run):
    before = snapshot(finished_run)
    message = one_line_error(run(train_cmd(data, finished_run, "--max_iters=4"), check=False))
    assert message == (f"error: out_dir={finished_run} holds a run ({finished_run / 'ckpt_latest.npz'} exists): "
                       "continue it with --init_from=resume, or replace it with --overwrite=true")
    from runs import RunFolder

    holder = RunFolder(str(finished_run))  # this process now holds the run's lock, as a running train.py would
    message = one_line_error(run(train_cmd(data, finished_run, "--init_from=resume", "--max_iters=4"), check=False))
    assert message == (f"error: out_dir={finished_run}: in use by another training run (pid {os.getpid()}); "
                       "wait for it to end, or use another --out_dir")
    os.close(holder._fd)  # released, as the OS does when a process dies
    assert snapshot(finished_run) == before
    assert {r["run_id"] for r in log_rows(finished_run)} and all(len(r["run_id"]) > 8 for r in log_rows(finished_run))


@pytest.mark.parametrize("damage, expected", [
    (lambda log: (os.remove(log), os.mkdir(log)), "log.jsonl: not a file"),
    (lambda log: log.write_bytes(log.read_bytes() + b"\xff\xfe\n"), "log.jsonl: not UTF-8 (byte offset"),
    (lambda log: log.write_text('{"step": null}\n' + log.read_text()), "log.jsonl:1: not a log row (no integer step)"),
])
def test_a_damaged_log_is_named_on_resume(data, finished_run, tmp_path, damage, expected):
    out = tmp_path / "copy"
    shutil.copytree(finished_run, out)
    damage(out / "log.jsonl")
    message = one_line_error(run(train_cmd(data, out, "--init_from=resume", "--max_iters=4"), check=False))
    assert message.startswith("error: ") and expected in message, message


def test_bad_surroundings_and_settings_are_one_line_errors(data, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    cases = [
        ([f"--out_dir={a_file}"], f"error: out_dir={a_file}: is a file, not a folder"),
        (["--out_dir=/proc/seq2seq_run"], "error: out_dir=/proc/seq2seq_run: cannot write there"),
        (["--seed=-1"], "error: seed=-1: must not be negative"),
        (["--hidden_size=100000000"], "error: hidden_size=100000000, embed_size=8: the model needs about"),
    ]
    for flags, expected in cases:
        message = one_line_error(run(train_cmd(data, tmp_path / "run", *flags), check=False))  # later flags win
        assert message.startswith(expected), (flags, message)
    toml = tmp_path / "latin1.toml"
    toml.write_bytes("# caf\xe9\nbatch_size = 4\n".encode("latin-1"))
    message = one_line_error(run([*train_cmd(data, tmp_path / "run"), str(toml)], check=False))
    assert message == f"error: {toml}: not UTF-8 (byte offset 5)"


def copy_dataset(data, folder, **changes):
    """A copy of a prepared dataset with some of its files replaced (bytes) or meta.json facts changed."""
    shutil.copytree(data, folder)
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    for name, value in changes.items():
        if name.endswith(".npz"):
            np.savez(folder / name, **value)
        else:
            meta[name] = value
    (folder / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    from dataset import reseal

    reseal(folder)  # the manifest follows the edit: the checks behind it are what is tested
    return folder


def test_bad_prepared_data_is_named(data, tmp_path):
    from dataset import DataError, load_dataset

    good = read_npz(os.path.join(data, "train.npz"))
    meta = json.loads(open(os.path.join(data, "meta.json"), encoding="utf-8").read())
    small_tgt = meta["tgt_vocab"][:-3]  # target ids of the last 3 words now fall outside it
    cases = {
        "tgt_vocab": (dict(tgt_vocab=small_tgt), "a target token id is outside its vocabulary"),
        "float_ids": ({"train.npz": dict(good, src=good["src"].astype(np.float32))}, "src holds float32 data"),
        "negative": ({"train.npz": dict(good, src_len=np.r_[-1, good["src_len"][1:2] + 1, good["src_len"][2:]])},
                     "negative sequence lengths"),
        "vocab_number": (dict(src_vocab=7), "malformed meta.json"),
    }
    for name, (changes, expected) in cases.items():
        with pytest.raises(DataError, match=expected):
            load_dataset(str(copy_dataset(data, tmp_path / name, **changes)))
    (tmp_path / "list").mkdir()
    (tmp_path / "list" / "meta.json").write_text("[1, 2]")
    with pytest.raises(DataError, match=r"malformed meta.json \(a JSON list, not an object\)"):
        load_dataset(str(tmp_path / "list"))
    empty_val = copy_dataset(data, tmp_path / "empty_val", **{"val.npz": dict(
        src=np.zeros(0, np.int32), tgt=np.zeros(0, np.int32), src_len=np.zeros(0, np.int64), tgt_len=np.zeros(0, np.int64))})
    message = one_line_error(run(train_cmd(empty_val, tmp_path / "run"), check=False))
    assert message == f"error: {empty_val}/val.npz: no pairs; val pairs are needed here"


def test_resume_refuses_data_prepared_with_other_settings(data, finished_run, tmp_path):
    flipped = copy_dataset(data, tmp_path / "flipped", reverse_source=True)
    out = tmp_path / "copy"
    shutil.copytree(finished_run, out)
    before = snapshot(out)
    message = one_line_error(run(train_cmd(flipped, out, "--init_from=resume", "--max_iters=4"), check=False))
    assert message == (f"error: {flipped}: prepared with other settings than the run used: "
                       "reverse_source False then, True now")
    assert snapshot(out) == before
