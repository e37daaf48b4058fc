"""Crash safety and clear errors: SIGKILL at random moments (also mid-checkpoint) loses
nothing since the last checkpoint and resume ends where an uninterrupted run ends; SIGTERM
and SIGINT save; a checkpoint that cannot be written is a one-line error that leaves the
previous one intact; non-finite losses stop or are skipped; bad corpora are named."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import ROOT, log_rows, run_command as run
from model import Model, read_npz

sys.path.insert(0, os.path.join(ROOT, "data", "kjv"))
import prepare as kjv_prepare  # noqa: E402

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
    proc = run(train_cmd(data, out, "--max_iters=4", "--eval_interval=2"), check=False)
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert proc.returncode != 0 and len(errors) == 1, proc.stderr  # one line, no traceback
    assert errors[0].startswith("error: cannot write") and "ckpt_latest.npz" in errors[0]
    assert "Traceback" not in proc.stderr
    assert not [f for f in os.listdir(out) if f.startswith(".tmp-")]  # no temp file left behind


def test_disk_full_during_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    from model import ModelConfig

    model = Model(ModelConfig(embed_size=4, hidden_size=4, src_vocab_size=8, tgt_vocab_size=8))
    path = tmp_path / "ckpt.npz"
    model.save(path)
    before = path.read_bytes()

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    with pytest.raises(OSError, match="No space left"):
        model.save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ckpt.npz"]


def test_nonfinite_loss_stops_naming_the_step_or_is_skipped(data, tmp_path):
    blow_up = ["--learning_rate=3e38", "--min_lr=3e38", "--grad_clip=0", "--optimizer=sgd"]  # overflows
    out = tmp_path / "stop"
    proc = run(train_cmd(data, out, "--max_iters=20", "--eval_interval=1", *blow_up), check=False)
    assert proc.returncode != 0
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith("error: step ") and "Last good checkpoint" in message, proc.stderr
    bad_step = int(message.split()[2].rstrip(":"))
    assert Model.load(out / "ckpt_latest.npz").checkpoint_state["step"] == bad_step
    # skip_nonfinite: a NaN word vector poisons exactly the batches whose source holds that
    # word; those are skipped and counted, the others train.
    out = tmp_path / "skip"
    run(train_cmd(data, out, "--max_iters=2", "--eval_interval=2", "--batch_size=1"))
    arrays = read_npz(out / "ckpt_latest.npz")
    poisoned = arrays["param/src_embed.W"].copy()
    poisoned[4] = np.nan  # the first word of the vocabulary
    arrays["param/src_embed.W"] = poisoned
    np.savez(out / "ckpt_latest.npz", **arrays)
    run(train_cmd(data, out, "--init_from=resume", "--max_iters=14", "--eval_interval=12", "--skip_nonfinite=true"))
    last = log_rows(out)[-1]
    assert last["step"] == 14 and last["skipped_nonfinite"] > 0
    # Blown-up weights make every batch non-finite: that stops after 20 in a row.
    proc = run(train_cmd(data, tmp_path / "diverged", "--max_iters=60", "--eval_interval=100",
                         "--skip_nonfinite=true", *blow_up), check=False)
    assert proc.returncode != 0 and "20 batches in a row" in proc.stderr


# ---- bad corpora and inputs -------------------------------------------------------------


def verse_line(book, chapter, verse, text):
    return json.dumps({"citation": f"{book} {chapter}:{verse}", "text": text, "book": book,
                       "chapter": chapter, "verse": verse}) + "\n"


@pytest.mark.parametrize("content, message", [
    (None, "No such file or directory"),
    (b"", "no verses found"),
    (b"\n\n  \n", "no verses found"),
    (verse_line("A", 1, 1, "ok .").encode() + b'{"text": "caf\xe9"}\n', "bad.jsonl:2: not UTF-8"),
])
def test_bad_corpus_is_named(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SystemExit, match=message):
        kjv_prepare.main(["--source", str(path), "--out_dir", str(tmp_path / "o")])


def test_blank_lines_are_skipped_and_long_verses_truncated_and_counted(tmp_path):
    lines = [verse_line("A", 1 + v // 4, v, " ".join(["word"] * (5 if v != 3 else 50))) for v in range(40)]
    path = tmp_path / "k.jsonl"
    path.write_text("\n".join(lines), encoding="utf-8")  # a blank line between verses
    args = ["--source", str(path), "--out_dir", str(tmp_path / "o"), "--max_len", "10"]
    with pytest.raises(SystemExit, match="k.jsonl: no val pairs; the corpus has too few chapters"):
        kjv_prepare.main(args)  # 10 chapters: 3% of them is none
    kjv_prepare.main(args + ["--val_frac", "0.1", "--test_frac", "0.1"])
    meta = json.load(open(tmp_path / "o" / "meta.json"))
    assert meta["n_verses"] == 40 and meta["n_truncated_verses"] == 1


@pytest.mark.parametrize("setting", ["--learning_rate=inf", "--grad_clip=nan", "--dropout=nan", "--min_lr=-inf"])
def test_nonfinite_settings_are_one_line_errors(setting):
    from configurator import ConfigError, configure
    from model import ModelConfig
    from train import TrainConfig, check

    cfg, mcfg = TrainConfig(), ModelConfig()
    configure([cfg, mcfg], [setting], "")
    with pytest.raises(ConfigError, match=f"{setting[2:].split('=')[0]}=.*must be a finite number"):
        check(cfg, mcfg)

