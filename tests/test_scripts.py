"""train.py and sample.py through their command lines: smoke runs, exact resume, clear
errors, and the reverse task learned end to end."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from helpers import ROOT, log_rows
from checkpoint import read_arrays as read_npz

TINY = ["--embed_size=8", "--hidden_size=16", "--batch_size=8", "--eval_exact_match=20",
        "--num_samples=2", "--max_decode_len=10", "--max_minutes=0"]
CONSTANT_LR = ["--learning_rate=0.005", "--min_lr=0.005", "--warmup_iters=0"]


def run(script, *args, stdin=None, check=True):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, args)],
                          input=stdin, capture_output=True, text=True, cwd=ROOT, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def tiny_data(tiny_reverse):
    return tiny_reverse


@pytest.fixture(scope="module")
def smoke_run(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    proc = run("train.py", f"--dataset={tiny_data}", f"--out_dir={out}", "--max_iters=4", "--eval_interval=2", *TINY)
    return out, proc


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


def test_sample_from_checkpoint(smoke_run):
    out, _ = smoke_run
    proc = run("sample.py", f"--out_dir={out}", "--start=s1 s2 s3", "--num_samples=2", "--max_len=8")
    lines = proc.stdout.splitlines()
    assert lines[0] == "> s1 s2 s3" and len(lines) == 3 and all("log p =" in x for x in lines[1:])
    proc = run("sample.py", f"--out_dir={out}", "--temperature=0", stdin="s4 s5\n\nqqq zzz\n")
    assert "> s4 s5" in proc.stdout and "> qqq zzz" in proc.stdout
    assert "every word is outside the vocabulary" in proc.stdout  # handled, not a crash
    assert proc.stdout.count("log p =") == 2  # greedy: one output per input
    proc = run("sample.py", f"--out_dir={out}", "--start=   ")
    assert "no words in this input" in proc.stdout
    proc = run("sample.py", f"--out_dir={out}", "--start=qqq zzz", "--temperature=0")
    assert "every word is outside the vocabulary" in proc.stdout and "log p =" in proc.stdout


def test_resume_continues_exactly(tiny_data, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    common = [f"--dataset={tiny_data}", "--eval_interval=3", *TINY, *CONSTANT_LR]
    run("train.py", f"--out_dir={straight}", "--max_iters=6", *common)
    run("train.py", f"--out_dir={split}", "--max_iters=3", *common)
    run("train.py", f"--out_dir={split}", "--max_iters=6", "--init_from=resume")
    a, b = read_npz(straight / "ckpt_latest.npz"), read_npz(split / "ckpt_latest.npz")
    assert sorted(a) == sorted(b)
    for key in a:
        if key.startswith(("param/", "opt/")):
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert float(b["opt/adam.t.encoder"]) == 6.0  # each module counts its own Adam steps
    assert [r["step"] for r in log_rows(split)] == [3, 6]
    assert json.loads(str(b["meta"]))["state"]["step"] == 6


@pytest.mark.parametrize("flag, message", [
    ("--bogus=1", "--bogus=1: unknown setting 'bogus'"),
    ("--batchsize=8", "did you mean batch_size?"),
    ("--batch_size=abc", "--batch_size=abc: batch_size='abc' is not a valid int"),
    ("--hidden_size=0", "hidden_size=0: must be positive"),
    ("--learning_rate=-1", "learning_rate=-1.0: must be positive"),
    ("--init_from=resume", "ckpt_latest.npz: no such checkpoint"),
    ("--max_minutes=1e306", "max_minutes=1e+306: must be at most 525,600 (a year)"),
    ("--max_decode_len=1000000", "max_decode_len=1000000: must be at most 1000"),
])
def test_train_rejects_bad_settings_in_one_line(flag, message, tmp_path):
    proc = run("train.py", f"--out_dir={tmp_path / 'none'}", flag, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr


def test_sample_rejects_negative_temperature_and_help_lists_settings(smoke_run):
    out, _ = smoke_run
    proc = run("sample.py", f"--out_dir={out}", "--start=s1", "--temperature=-1", check=False)
    assert proc.returncode != 0 and proc.stderr.strip() == "error: temperature=-1.0: must not be negative"
    for script, key in (("train.py", "--learning_rate="), ("sample.py", "--temperature=")):
        proc = run(script, "--help")
        assert key in proc.stdout


def test_reverse_task_is_learned(tmp_path):
    """The learning check: >= 99% held-out exact match on sequence reversal."""
    data = tmp_path / "reverse"
    run("data/reverse/prepare.py", "--out_dir", data)
    out = tmp_path / "run"
    run("train.py", os.path.join(ROOT, "config", "reverse.toml"), f"--dataset={data}", f"--out_dir={out}")
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
    run("data/kjv_es/prepare.py", "--pairs_tsv", corpus, "--out_dir", data, "--n_val", 10, "--n_test", 10)
    run("train.py", os.path.join(ROOT, "config", "kjv_es.toml"), f"--dataset={data}", f"--out_dir={out}",
        "--max_iters=4", "--eval_interval=2", *TINY)
    rows = log_rows(out)
    assert [r["step"] for r in rows] == [2, 4]
    assert all(0 <= r["val_bleu"] <= 100 and 0 <= r["val_chrf"] <= 100 for r in rows)
    proc = run("evaluate.py", f"--out_dir={out}", "--split=test", "--beam_size=2", "--max_len=10")
    result = json.loads((out / "eval_best_test_beam2.json").read_text(encoding="utf-8"))
    assert result["beam_size"] == 2 and result["n_pairs"] == 10 and 0 <= result["bleu"] <= 100 and result["ppl"] > 1
    assert f"BLEU {result['bleu']}" in proc.stdout
    assert len((out / "eval_best_test_beam2.txt").read_text(encoding="utf-8").splitlines()) == 10
    png = tmp_path / "attention.png"
    proc = run("sample.py", f"--out_dir={out}", "--start=god made light", "--beam_size=2",
               "--max_len=6", f"--plot_attention={png}")
    assert png.stat().st_size > 0 and "attention heatmap" in proc.stdout
    proc = run("sample.py", f"--out_dir={out}", "--start=god", "--beam_size=0", check=False)
    assert proc.returncode != 0 and "beam_size=0: must be between 1 and 1000" in proc.stderr


def test_own_text_to_samples_in_three_commands(tmp_path):
    """The README's three commands on a user's text file: prepare (SentencePiece), train
    into the default out/<dataset>, sample from it by --dataset; kept snapshots pruned."""
    sentences = [f"Mr. {name} walked to the {place} and back {when}." for name in ("Brown", "Green", "White", "Black")
                 for place in ("river", "hill", "town", "mill", "farm") for when in ("again", "at noon", "at dusk")] * 5
    book = tmp_path / "book.txt"
    book.write_text("\n\n".join(" ".join(sentences[i : i + 5]) for i in range(0, 300, 5)), encoding="utf-8")
    data = tmp_path / f"mybook{os.getpid()}"
    run("data/text/prepare.py", "--input", book, "--out_dir", data, "--tokenizer", "sentencepiece",
        "--vocab_size", 60, "--min_held", 10)
    out = os.path.join(ROOT, "out", data.name)  # train.py's default out_dir for this dataset
    try:
        run("train.py", f"--dataset={data}", "--max_iters=6", "--eval_interval=2", "--keep_last=2", *TINY)
        assert sorted(n for n in os.listdir(out) if n.startswith("ckpt_step")) == ["ckpt_step4.npz", "ckpt_step6.npz"]
        snapshot, latest = read_npz(os.path.join(out, "ckpt_step6.npz")), read_npz(os.path.join(out, "ckpt_latest.npz"))
        for key in (k for k in latest if k.startswith(("param/", "opt/"))):
            np.testing.assert_array_equal(snapshot[key], latest[key], err_msg=key)
        proc = run("sample.py", f"--dataset={data}", "--start=Mr. Brown walked.", "--temperature=0",
                   "--no_repeat_ngram_size=2", "--max_len=12")
        lines = proc.stdout.splitlines()
        assert lines[0] == "> Mr. Brown walked." and "log p =" in lines[1]
        assert "\u2581" not in proc.stdout  # SentencePiece's word marks are decoded away
    finally:
        shutil.rmtree(out, ignore_errors=True)


def test_a_run_says_when_it_will_make_many_epochs_or_warm_up_too_long():
    from types import SimpleNamespace

    from progress import Progress, notices
    from train import TrainConfig, TrainState

    def run(**settings):
        return SimpleNamespace(cfg=TrainConfig(batch_size=64, **settings), state=TrainState(step=100),
                               splits={"train": [None] * 1000})

    by_steps = notices(run(max_iters=700, warmup_iters=400), elapsed_s=0.0)
    assert by_steps[0].startswith("note: 700 steps of 64 are 45 epochs of 1,000 training pairs; expect overfitting")
    assert by_steps[1].startswith("warning: warmup_iters=400 is 57% of the run (700 steps)")
    assert notices(run(max_iters=10, warmup_iters=5), elapsed_s=0.0) == []  # < 1 epoch, warm-up half the run
    # A time limit: the steps that fit come from the speed so far (100 steps a minute here).
    by_time = notices(run(max_iters=0, max_minutes=10, warmup_iters=100), elapsed_s=60.0)
    assert by_time == ["note: about 1,000 steps of 64 are 64 epochs of 1,000 training pairs; expect overfitting: "
                       "--patience=N stops when val loss stops improving, and the model's dropout settings regularise "
                       "(--help)"]
    both = notices(run(max_iters=20_000, max_minutes=10, warmup_iters=100), elapsed_s=60.0)
    assert both[0].startswith("note: 1,000 steps of 64 are 64 epochs")  # the time limit binds first
    # The bar counts minutes whenever there is a time limit, steps otherwise.
    assert Progress(run(max_iters=20_000, max_minutes=10).cfg, TrainState(), 0.0, enabled=False).by_time
    assert not Progress(run(max_iters=700).cfg, TrainState(), 0.0, enabled=False).by_time


def test_time_bound_runs_finish_their_learning_rate_schedule():
    from train import TrainConfig, TrainState, learning_rate

    peak, floor, middle = 1e-2, 1e-4, (1e-2 + 1e-4) / 2
    cfg = TrainConfig(learning_rate=peak, min_lr=floor, warmup_iters=0, max_iters=0, max_minutes=10)
    state = TrainState(step=10)
    assert learning_rate(cfg, state, elapsed_s=0) == pytest.approx(peak, rel=1e-3)
    assert learning_rate(cfg, state, elapsed_s=300) == pytest.approx(middle)  # half the time: half the cosine
    assert learning_rate(cfg, state, elapsed_s=600) == pytest.approx(floor)
    cfg.max_iters, cfg.max_minutes = 100_000, 0  # no time bound: steps alone set the schedule
    assert learning_rate(cfg, TrainState(step=50_000, warmup_end=0.0), elapsed_s=600) == pytest.approx(middle)
    assert TrainConfig().max_minutes == 0 and TrainConfig().out_dir == ""  # no time cap by default


def test_warm_up_and_decay_follow_the_same_progress():
    """A time-bound run that spends 40% of its time warming up decays from the peak over
    the remaining 60%, with no jump; a step-bound run's schedule is the classic one."""
    from train import TrainConfig, TrainState, learning_rate

    cfg = TrainConfig(learning_rate=1e-2, min_lr=0.0, warmup_iters=100, max_iters=0, max_minutes=10)
    state = TrainState()
    rates = []
    for step, seconds in ((0, 0), (50, 120), (99, 238), (100, 240), (101, 242), (150, 420), (200, 600)):
        state.step = step
        rates.append(learning_rate(cfg, state, elapsed_s=seconds))
    assert rates[0] == pytest.approx(1e-4) and rates[2] == pytest.approx(1e-2)  # linear warm-up
    assert rates[3] == pytest.approx(1e-2) and rates[4] == pytest.approx(1e-2, rel=1e-3)  # no fall after it
    assert rates[5] == pytest.approx(0.5e-2, rel=1e-3) and rates[6] == pytest.approx(0.0, abs=1e-9)
    assert state.warmup_end == pytest.approx(0.4)
    cfg = TrainConfig(learning_rate=1e-2, min_lr=0.0, warmup_iters=100, max_iters=1100)
    state = TrainState(step=600)
    assert learning_rate(cfg, state) == pytest.approx(1e-2) and state.warmup_end == pytest.approx(600 / 1100)
    state = TrainState(step=600, warmup_end=100 / 1100)  # warm-up ended at step 100
    assert learning_rate(cfg, state) == pytest.approx(0.5e-2)  # (600 - 100) / (1100 - 100): half the cosine


def test_runs_live_in_out_slash_dataset_unless_told():
    from runs import run_dir

    assert run_dir("", "kjv") == os.path.join(ROOT, "out", "kjv")  # from any working directory
    assert run_dir("", "/data/corpora/mybook/") == os.path.join(ROOT, "out", "mybook")
    assert run_dir("runs/x", "kjv") == "runs/x"


def test_decoding_settings_that_cannot_apply_are_refused_and_tiny_temperatures_are_greedy(smoke_run):
    """Beam search with sampling settings is one line, not a silent beam; a temperature too
    small for float32 decodes greedily, never an empty or <pad> output."""
    out, _ = smoke_run
    proc = run("sample.py", f"--out_dir={out}", "--start=s1 s2", "--beam_size=3", "--top_k=5", "--temperature=0.5",
               check=False)
    assert proc.returncode != 0 and proc.stderr.strip() == ("error: temperature=0.5, top_k=5: beam search (beam_size=3) "
                                                            "does not sample; drop them, or use beam_size=1")
    for flag, message in (("--max_len=1000000", "max_len=1000000: must be between 1 and 1000"),
                          ("--beam_size=1000000000", "beam_size=1000000000: must be between 1 and 1000")):
        proc = run("sample.py", f"--out_dir={out}", "--start=s1", flag, check=False)
        assert proc.returncode != 0 and proc.stderr.strip() == f"error: {message}", proc.stderr
    greedy = run("sample.py", f"--out_dir={out}", "--start=s1 s2 s3", "--temperature=0").stdout
    for flags in (["--temperature=1e-45"], ["--temperature=1e-320", "--top_k=5"]):
        assert run("sample.py", f"--out_dir={out}", "--start=s1 s2 s3", *flags).stdout == greedy, flags


def test_the_prompt_quits_on_ctrl_d_and_ctrl_c_without_a_traceback(smoke_run):
    import pty
    import signal
    import time

    out, _ = smoke_run
    for action in ("ctrl-d", "ctrl-c"):
        master, slave = pty.openpty()
        proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "sample.py"), f"--out_dir={out}"], stdin=slave,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        os.close(slave)
        seen = [proc.stderr.readline() for _ in range(1)]
        while "Ctrl-D quits" not in seen[-1] and seen[-1] and len(seen) < 50:  # the model loads, the prompt is up
            seen.append(proc.stderr.readline())
        assert "Ctrl-D quits" in seen[-1], seen
        time.sleep(0.5)
        if action == "ctrl-d":
            os.write(master, b"\x04")
        else:
            proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
        os.close(master)
        assert "Traceback" not in stderr and "error" not in stderr, (action, stderr)
        assert proc.returncode == (0 if action == "ctrl-d" else 130), (action, proc.returncode, stderr)


def test_the_resume_hint_of_a_finished_run_trains_on(smoke_run, tmp_path):
    """A run that stopped at step 4, resumed with max_iters=2, trains nothing and advises a
    limit beyond step 4; following the advice trains on."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(smoke_run[0], out, ignore=shutil.ignore_patterns(".lock"))
    proc = run("train.py", "--init_from=resume", f"--out_dir={out}", "--max_iters=2")
    assert "already stopped at step 4 (max_iters=2)" in proc.stdout and "--max_iters=6" in proc.stdout
    run("train.py", "--init_from=resume", f"--out_dir={out}", "--max_iters=6", "--eval_interval=2")
    assert log_rows(out)[-1]["step"] == 6


def test_mode_jax_without_jax_is_one_line_before_any_run_folder(tiny_data, tmp_path):
    """Where JAX cannot be imported, --mode=JAX is one line with the install command, and
    no run folder is left behind."""
    shim = tmp_path / "shim" / "jax"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('No module named jax (hidden by the test)')\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "shim"))
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), f"--dataset={tiny_data}",
                           f"--out_dir={out}", "--mode=JAX", *TINY], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=600)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: mode=JAX needs JAX") and "pip install -r requirements-jax.txt" in lines[0]
    assert not out.exists()


def test_evaluate_scores_the_dataset_it_is_given(smoke_run, tmp_path):
    """--dataset names the data scored, not the checkpoint's own: a second reverse task (its
    own 30 test pairs, the same symbols) is scored as given."""
    other = tmp_path / "other"
    run(os.path.join("data", "reverse", "prepare.py"), "--out_dir", other, "--n_train", 100, "--n_heldout", 30,
        "--max_len", 6, "--seed", 7)
    proc = run("evaluate.py", f"--out_dir={smoke_run[0]}", f"--dataset={other}")
    assert "of 30 pairs" in proc.stdout, proc.stdout


def test_a_checkpoint_without_its_vocabulary_is_named_for_what_it_is(smoke_run, tmp_path):
    import shutil

    from checkpoint import read_arrays, save_arrays

    out = tmp_path / "run"
    shutil.copytree(smoke_run[0], out, ignore=shutil.ignore_patterns(".lock"))
    arrays = read_arrays(out / "ckpt_latest.npz")
    del arrays["src_vocab"]
    save_arrays(out / "ckpt_latest.npz", arrays)
    proc = run("train.py", "--init_from=resume", f"--out_dir={out}", "--max_iters=6", check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert "ckpt_latest.npz: holds no source vocabulary (damaged?)" in lines[0]


def test_a_timed_run_keeps_its_time_across_an_interruption_and_then_trains_nothing(tiny_data, tmp_path):
    """SIGTERM before the first evaluation saves the time trained so far; the resumed run
    trains only what is left of max_minutes; resumed once more, the finished run says so and
    trains nothing (no new log row, no step)."""
    import signal
    import time

    from checkpoint import read_arrays

    out = tmp_path / "run"
    flags = [f"--dataset={tiny_data}", f"--out_dir={out}", "--max_minutes=0.2", "--eval_interval=100000",
             *[f for f in TINY if not f.startswith("--max_minutes")]]
    job = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *flags], cwd=ROOT, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    while "compiled in" not in (line := job.stdout.readline()) and line:
        pass
    time.sleep(4.0)
    job.send_signal(signal.SIGTERM)
    job.communicate(timeout=120)
    state = json.loads(str(read_arrays(out / "ckpt_latest.npz")["meta"]))["state"]
    assert 3.0 < state["train_seconds"] < 12.0, state["train_seconds"]
    run("train.py", "--init_from=resume", f"--out_dir={out}")
    state = json.loads(str(read_arrays(out / "ckpt_latest.npz")["meta"]))["state"]
    assert 12.0 <= state["train_seconds"] < 20.0, state["train_seconds"]  # 0.2 minutes in all, not 0.2 more
    rows = log_rows(out)
    proc = run("train.py", "--init_from=resume", f"--out_dir={out}")
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
    proc = run("train.py", str(config), "--init_from=resume", f"--out_dir={out}", "--eval_interval=2")
    changes = next(line for line in proc.stdout.splitlines() if line.startswith("resuming with changed settings: "))
    assert sorted(changes.split(": ", 1)[1].split(", ")) == ["learning_rate 0.005 -> 0.002", "max_iters 4 -> 6"]
    assert "the learning rate at step 4 goes from" in proc.stdout
    proc = run("train.py", "--init_from=resume", f"--out_dir={out}")
    assert "resuming with changed settings" not in proc.stdout


def test_notes_on_the_runs_shape_come_before_the_run_ends(tiny_data, tmp_path):
    """A time-limited run whose only evaluation is its last says its warm-up is too long once
    its speed is known (after 20 steps), not after it has stopped."""
    out = tmp_path / "run"
    flags = [f"--dataset={tiny_data}", f"--out_dir={out}", "--max_minutes=0.1", "--eval_interval=100000",
             "--warmup_iters=1000000", *[f for f in TINY if not f.startswith("--max_minutes")]]
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *flags], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=600)  # one stream: the order as printed
    assert proc.returncode == 0, proc.stdout
    text = proc.stdout
    warning, evaluation = text.find("warning: warmup_iters=1000000"), text.find("val_loss")
    assert 0 <= warning < evaluation, text[-3000:]


def test_sample_and_evaluate_under_mode_jax_without_jax_are_one_line(smoke_run, tmp_path):
    shim = tmp_path / "shim" / "jax"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('No module named jax (hidden by the test)')\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "shim"))
    for script, extra in (("sample.py", ["--start=s1"]), ("evaluate.py", [])):
        proc = subprocess.run([sys.executable, os.path.join(ROOT, script), f"--out_dir={smoke_run[0]}", "--mode=JAX",
                               *extra], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode != 0 and len(lines) == 1, (script, proc.stderr)
        assert lines[0].startswith("error: mode=JAX needs JAX") and "requirements-jax.txt" in lines[0], script
