"""train.py through its command line: smoke runs, exact resume, timed runs across interruptions,
clear errors, and the reverse task learned end to end."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from helpers import ROOT, TINY_TRAIN, log_rows, run_script
from checkpoint import read_arrays as read_npz

CONSTANT_LR = ["--learning_rate=0.005", "--min_lr=0.005", "--warmup_iters=0"]


def test_train_smoke_writes_log_plot_and_checkpoints(smoke_run):
    out, proc = smoke_run
    rows = log_rows(out)
    assert [r["step"] for r in rows] == [2, 4]
    for key in ("train_loss", "val_loss", "val_ppl", "val_exact_match", "tokens_per_s"):
        assert all(np.isfinite(r[key]) for r in rows), key
    assert rows[-1]["val_ppl"] == pytest.approx(np.exp(rows[-1]["val_loss"]), rel=1e-6)
    for name in ("ckpt_latest.npz", "ckpt_best.npz", "loss.png"):
        assert os.path.getsize(out / name) > 0
    assert "greedy:" in proc.stdout and "reference:" in proc.stdout


def test_a_run_keeps_its_console_its_settings_and_its_loss_every_few_steps(smoke_run):
    from configurator import configure
    from model_config import ModelConfig
    from train import TrainConfig

    out, proc = smoke_run
    with open(out / "train.log", encoding="utf-8") as f:
        assert f.read() == proc.stdout  # what it printed, the progress bar aside
    cfg, mcfg = TrainConfig(), ModelConfig()
    configure([cfg, mcfg], [str(out / "settings.toml")], "")
    assert (cfg.max_iters, cfg.batch_size, cfg.log_interval, mcfg.hidden_size, mcfg.embed_size) == (4, 8, 1, 16, 8)
    with open(out / "steps.jsonl", encoding="utf-8") as f:
        steps = [json.loads(line) for line in f]
    assert [r["step"] for r in steps] == [1, 2, 3, 4] and all(r["train_loss"] > 0 for r in steps)


def test_resume_continues_exactly(tiny_reverse, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    common = [f"--dataset={tiny_reverse}", "--eval_interval=3", *TINY_TRAIN, *CONSTANT_LR]
    run_script("train.py", f"--out_dir={straight}", "--max_iters=6", *common)
    run_script("train.py", f"--out_dir={split}", "--max_iters=3", *common)
    run_script("train.py", f"--out_dir={split}", "--max_iters=6", "--init_from=resume")
    a, b = read_npz(straight / "ckpt_latest.npz"), read_npz(split / "ckpt_latest.npz")
    assert sorted(a) == sorted(b)
    for key in a:
        if key.startswith(("param/", "opt/")):
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert float(b["opt/adam.t.encoder"]) == 6.0  # each module counts its own Adam steps
    assert [r["step"] for r in log_rows(split)] == [3, 6]
    assert json.loads(str(b["meta"]))["state"]["step"] == 6
    steps = [[json.loads(line) for line in open(folder / "steps.jsonl", encoding="utf-8")] for folder in (straight, split)]
    assert [r["step"] for r in steps[1]] == [1, 2, 3, 4, 5, 6]  # every log_interval=1 step, once
    assert [r["train_loss"] for r in steps[1]] == pytest.approx([r["train_loss"] for r in steps[0]], rel=1e-5)


@pytest.mark.parametrize("flag, message", [
    ("--bogus=1", "--bogus=1: unknown setting 'bogus'"),
    ("--batchsize=8", "did you mean batch_size?"),
    ("--batch_size=abc", "--batch_size=abc: batch_size='abc' is not a valid int"),
    ("--hidden_size=0", "hidden_size=0: must be positive"),
    ("--learning_rate=-1", "learning_rate=-1.0: must be positive"),
    ("--init_from=resume", "ckpt_latest.npz: no such checkpoint"),
    ("--max_minutes=1e306", "max_minutes=1e+306: must be at most 525,600 (a year)"),
    ("--max_decode_len=1000000", "max_decode_len=1000000: must be at most 1000"),
    ("--batch_tokens=-1", "batch_tokens=-1: must not be negative"),
])
def test_train_rejects_bad_settings_in_one_line(flag, message, tmp_path):
    proc = run_script("train.py", f"--out_dir={tmp_path / 'none'}", flag, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr


def test_reverse_task_is_learned(tmp_path):
    """The learning check: >= 99% held-out exact match on sequence reversal."""
    data = tmp_path / "reverse"
    run_script("data/reverse/prepare.py", "--out_dir", data)
    out = tmp_path / "run"
    run_script("train.py", os.path.join(ROOT, "config", "reverse.toml"), f"--dataset={data}", f"--out_dir={out}")
    final = log_rows(out)[-1]
    assert final["val_exact_match"] >= 0.99, final


def test_translation_pipeline_smoke(tmp_path):
    """A parallel corpus through data/kjv_es/prepare.py --pairs_tsv, the translation config
    (bidirectional encoder + attention) for a few steps with BLEU logged, evaluate.py with
    a beam, and sample.py's attention heatmap."""
    rng = np.random.default_rng(0)
    words = ["god", "light", "water", "earth", "man", "day"]
    spanish = {"god": "dios", "light": "luz", "water": "agua", "earth": "tierra", "man": "hombre", "day": "día"}
    lines = []
    for _ in range(120):
        sentence = list(rng.choice(words, rng.integers(2, 6)))
        lines.append(" ".join(sentence) + "\t" + " ".join(spanish[w] for w in sentence) + "\n")
    corpus = tmp_path / "pairs.tsv"
    corpus.write_text("".join(lines), encoding="utf-8")
    data, out = tmp_path / "data", tmp_path / "run"
    run_script("data/kjv_es/prepare.py", "--pairs_tsv", corpus, "--out_dir", data, "--n_val", 10, "--n_test", 10)
    run_script("train.py", os.path.join(ROOT, "config", "kjv_es.toml"), f"--dataset={data}", f"--out_dir={out}",
        "--max_iters=4", "--eval_interval=2", *TINY_TRAIN)
    rows = log_rows(out)
    assert [r["step"] for r in rows] == [2, 4]
    assert all(0 <= r["val_bleu"] <= 100 and 0 <= r["val_chrf"] <= 100 for r in rows)
    proc = run_script("evaluate.py", f"--out_dir={out}", "--split=test", "--beam_size=2", "--max_len=10")
    result = json.loads((out / "eval_best_test_beam2.json").read_text(encoding="utf-8"))
    assert result["beam_size"] == 2 and result["n_pairs"] == 10 and 0 <= result["bleu"] <= 100 and result["ppl"] > 1
    assert f"BLEU {result['bleu']}" in proc.stdout
    assert len((out / "eval_best_test_beam2.txt").read_text(encoding="utf-8").splitlines()) == 10
    png = tmp_path / "attention.png"
    proc = run_script("sample.py", f"--out_dir={out}", "--start=god made light", "--beam_size=2",
               "--max_len=6", f"--plot_attention={png}")
    assert png.stat().st_size > 0 and "attention heatmap" in proc.stdout
    proc = run_script("sample.py", f"--out_dir={out}", "--start=god", "--beam_size=0", check=False)
    assert proc.returncode != 0 and "beam_size=0: must be between 1 and 1000" in proc.stderr


def test_own_text_to_samples_in_three_commands(tmp_path):
    """The README's three commands on a user's text file: prepare (SentencePiece), train
    into the default out/<dataset>, sample from it by --dataset; kept snapshots pruned."""
    sentences = [f"Mr. {name} walked to the {place} and back {when}." for name in ("Brown", "Green", "White", "Black")
                 for place in ("river", "hill", "town", "mill", "farm") for when in ("again", "at noon", "at dusk")] * 5
    book = tmp_path / "book.txt"
    book.write_text("\n\n".join(" ".join(sentences[i : i + 5]) for i in range(0, 300, 5)), encoding="utf-8")
    data = tmp_path / f"mybook{os.getpid()}"
    run_script("data/text/prepare.py", "--input", book, "--out_dir", data, "--tokenizer", "sentencepiece",
        "--vocab_size", 60, "--min_held", 10)
    out = os.path.join(ROOT, "out", data.name)  # train.py's default out_dir for this dataset
    try:
        run_script("train.py", f"--dataset={data}", "--max_iters=6", "--eval_interval=2", "--keep_last=2", *TINY_TRAIN)
        assert sorted(n for n in os.listdir(out) if n.startswith("ckpt_step")) == ["ckpt_step4.npz", "ckpt_step6.npz"]
        snapshot, latest = read_npz(os.path.join(out, "ckpt_step6.npz")), read_npz(os.path.join(out, "ckpt_latest.npz"))
        for key in (k for k in latest if k.startswith(("param/", "opt/"))):
            np.testing.assert_array_equal(snapshot[key], latest[key], err_msg=key)
        proc = run_script("sample.py", f"--dataset={data}", "--start=Mr. Brown walked.", "--temperature=0",
                   "--no_repeat_ngram_size=2", "--max_len=12")
        lines = proc.stdout.splitlines()
        assert lines[0] == "> Mr. Brown walked." and "log p =" in lines[1]
        assert "\u2581" not in proc.stdout  # SentencePiece's word marks are decoded away
    finally:
        shutil.rmtree(out, ignore_errors=True)


def test_runs_live_in_out_slash_dataset_unless_told():
    from runs import run_dir

    assert run_dir("", "kjv") == os.path.join(ROOT, "out", "kjv")  # from any working directory
    assert run_dir("", "/data/corpora/mybook/") == os.path.join(ROOT, "out", "mybook")
    assert run_dir("runs/x", "kjv") == "runs/x"


def test_the_resume_hint_of_a_finished_run_trains_on(smoke_run, tmp_path):
    """A run that stopped at step 4, resumed with max_iters=2, trains nothing and advises a
    limit beyond step 4; following the advice trains on."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(smoke_run[0], out, ignore=shutil.ignore_patterns(".lock"))
    proc = run_script("train.py", "--init_from=resume", f"--out_dir={out}", "--max_iters=2")
    assert "already stopped at step 4 (max_iters=2)" in proc.stdout and "--max_iters=6" in proc.stdout
    run_script("train.py", "--init_from=resume", f"--out_dir={out}", "--max_iters=6", "--eval_interval=2")
    assert log_rows(out)[-1]["step"] == 6


def test_mode_jax_without_jax_is_one_line_before_any_run_folder(tiny_reverse, tmp_path):
    """Where JAX cannot be imported, --mode=JAX is one line with the install command, and
    no run folder is left behind."""
    shim = tmp_path / "shim" / "jax"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('No module named jax (hidden by the test)')\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "shim"))
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), f"--dataset={tiny_reverse}",
                           f"--out_dir={out}", "--mode=JAX", *TINY_TRAIN], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=600)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: mode=JAX needs JAX") and "pip install -r requirements-jax.txt" in lines[0]
    assert not out.exists()


def test_a_checkpoint_without_its_vocabulary_is_named_for_what_it_is(smoke_run, tmp_path):
    import shutil

    from checkpoint import read_arrays, save_arrays

    out = tmp_path / "run"
    shutil.copytree(smoke_run[0], out, ignore=shutil.ignore_patterns(".lock"))
    arrays = read_arrays(out / "ckpt_latest.npz")
    del arrays["src_vocab"]
    save_arrays(out / "ckpt_latest.npz", arrays)
    proc = run_script("train.py", "--init_from=resume", f"--out_dir={out}", "--max_iters=6", check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert "ckpt_latest.npz: holds no source vocabulary (damaged?)" in lines[0]


def test_a_timed_run_keeps_its_time_across_an_interruption_and_then_trains_nothing(tiny_reverse, tmp_path):
    """SIGTERM before the first evaluation saves the time trained so far; the resumed run
    trains only what is left of max_minutes; resumed once more, the finished run says so and
    trains nothing (no new log row, no step)."""
    import signal
    import time

    from checkpoint import read_arrays

    out = tmp_path / "run"
    flags = [f"--dataset={tiny_reverse}", f"--out_dir={out}", "--max_minutes=0.2", "--eval_interval=100000",
             *[f for f in TINY_TRAIN if not f.startswith("--max_minutes")]]
    job = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *flags], cwd=ROOT, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    while "compiled in" not in (line := job.stdout.readline()) and line:
        pass
    time.sleep(4.0)
    job.send_signal(signal.SIGTERM)
    job.communicate(timeout=120)
    state = json.loads(str(read_arrays(out / "ckpt_latest.npz")["meta"]))["state"]
    assert 3.0 < state["train_seconds"] < 12.0, state["train_seconds"]
    run_script("train.py", "--init_from=resume", f"--out_dir={out}")
    state = json.loads(str(read_arrays(out / "ckpt_latest.npz")["meta"]))["state"]
    assert 12.0 <= state["train_seconds"] < 20.0, state["train_seconds"]  # 0.2 minutes in all, not 0.2 more
    rows = log_rows(out)
    proc = run_script("train.py", "--init_from=resume", f"--out_dir={out}")
    assert "already stopped" in proc.stdout and "(max_minutes=0.2)" in proc.stdout
    assert log_rows(out) == rows
    assert json.loads(str(read_arrays(out / "ckpt_latest.npz")["meta"]))["state"]["step"] == state["step"]


def test_a_resume_says_which_settings_it_changes_and_what_the_learning_rate_does(smoke_run, tmp_path):
    """From flags or a config file, a resume that changes training settings says so, with
    the learning rate before and after where the schedule changes."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(smoke_run[0], out, ignore=shutil.ignore_patterns(".lock"))
    config = tmp_path / "longer.toml"
    config.write_text("max_iters = 6\nlearning_rate = 0.002\n")
    proc = run_script("train.py", str(config), "--init_from=resume", f"--out_dir={out}", "--eval_interval=2")
    changes = next(line for line in proc.stdout.splitlines() if line.startswith("resuming with changed settings: "))
    assert sorted(changes.split(": ", 1)[1].split(", ")) == ["learning_rate 0.005 -> 0.002", "max_iters 4 -> 6"]
    assert "the learning rate at step 4 goes from" in proc.stdout
    proc = run_script("train.py", "--init_from=resume", f"--out_dir={out}")
    assert "resuming with changed settings" not in proc.stdout


def test_notes_on_the_runs_shape_come_before_the_run_ends(tiny_reverse, tmp_path):
    """A time-limited run whose only evaluation is its last says its warm-up is too long once
    its speed is known (after 20 steps), not after it has stopped."""
    out = tmp_path / "run"
    flags = [f"--dataset={tiny_reverse}", f"--out_dir={out}", "--max_minutes=0.1", "--eval_interval=100000",
             "--warmup_iters=1000000", *[f for f in TINY_TRAIN if not f.startswith("--max_minutes")]]
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *flags], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=600)  # one stream: the order as printed
    assert proc.returncode == 0, proc.stdout
    text = proc.stdout
    warning, evaluation = text.find("warning: warmup_iters=1000000"), text.find("val_loss")
    assert 0 <= warning < evaluation, text[-3000:]


def test_a_run_fine_tuned_from_a_checkpoint_starts_from_its_weights_with_new_regularisers(smoke_run, tiny_reverse,
                                                                                          tmp_path):
    """--init_from=<checkpoint>: a new run (its own folder, step 0, fresh Adam) from the
    checkpoint's weights; regularisers may change, the architecture may not."""
    best = smoke_run[0] / "ckpt_best.npz"
    common = [f"--dataset={tiny_reverse}", f"--init_from={best}", *TINY_TRAIN, "--max_iters=2", "--eval_interval=2"]
    tiny_steps = ["--learning_rate=1e-9", "--min_lr=1e-9", "--warmup_iters=0"]
    run_script("train.py", f"--out_dir={tmp_path / 'tuned'}", "--rnn_dropout=0.2", *tiny_steps, *common)
    tuned, before = read_npz(tmp_path / "tuned" / "ckpt_latest.npz"), read_npz(best)
    meta = json.loads(str(tuned["meta"]))
    assert meta["state"]["step"] == 2 and meta["model_config"]["rnn_dropout"] == 0.2
    assert float(tuned["opt/adam.t.encoder"]) == 2.0
    for key in (k for k in before if k.startswith("param/")):
        np.testing.assert_allclose(tuned[key], before[key], atol=1e-6, err_msg=key)
    proc = run_script("train.py", f"--out_dir={tmp_path / 'wider'}", *common, "--hidden_size=32", check=False)
    assert proc.returncode != 0 and proc.stderr.strip().splitlines()[-1].endswith(
        "a fine-tuned run keeps its model's architecture: hidden_size=32")


def test_a_model_is_fine_tuned_on_other_text_prepared_with_its_vocabulary(smoke_run, tmp_path):
    best = smoke_run[0] / "ckpt_best.npz"
    text = tmp_path / "other.tsv"
    text.write_text("".join(f"s{i % 7} s{i % 5} s3\ts3 s{i % 5} s{i % 7}\n" for i in range(120)), encoding="utf-8")
    run_script(os.path.join("data", "text", "prepare.py"), "--pairs_tsv", text, "--out_dir", tmp_path / "other",
               "--min_held", 10, "--vocab_from", best)
    run_script("train.py", f"--dataset={tmp_path / 'other'}", f"--init_from={best}", f"--out_dir={tmp_path / 'run'}",
               *TINY_TRAIN, "--max_iters=2", "--eval_interval=2")
    assert [r["step"] for r in log_rows(tmp_path / "run")] == [2]


def tensorboard_scalars(folder):
    """{(tag, step): value} of the TensorBoard event files in `folder` (TFRecord framing:
    length, its CRC, the Event, its CRC)."""
    import glob
    import struct

    from tensorboardX.proto import event_pb2

    scalars = {}
    for path in glob.glob(os.path.join(folder, "events.out.tfevents.*")):
        with open(path, "rb") as f:
            data = f.read()
        start = 0
        while start < len(data):
            (length,) = struct.unpack("<Q", data[start : start + 8])
            event = event_pb2.Event.FromString(data[start + 12 : start + 12 + length])
            scalars.update({(v.tag, event.step): v.simple_value for v in event.summary.value})
            start += 12 + length + 4
    return scalars


def test_tensorboard_scalars_mirror_the_logs(tiny_reverse, tmp_path, monkeypatch):
    pytest.importorskip("tensorboardX", reason="pip install -r requirements-tensorboard.txt")
    out = tmp_path / "tb"
    run_script("train.py", f"--dataset={tiny_reverse}", f"--out_dir={out}", *TINY_TRAIN, "--max_iters=4",
               "--eval_interval=2", "--tensorboard=true")
    scalars = tensorboard_scalars(out / "tensorboard")
    for row in log_rows(out):
        assert scalars[("log/val_loss", row["step"])] == pytest.approx(row["val_loss"], rel=1e-6)
    with open(out / "steps.jsonl", encoding="utf-8") as f:
        for row in map(json.loads, f):
            assert scalars[("steps/train_loss", row["step"])] == pytest.approx(row["train_loss"], rel=1e-6)
    from model_config import ModelConfig
    from train import TrainConfig, check

    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # as where it is not installed
    with pytest.raises(Exception, match="^tensorboard=true: pip install -r requirements-tensorboard.txt$"):
        check(TrainConfig(tensorboard=True), ModelConfig())
