"""runs.py: the run folder's log and plot survive what a long run meets: a folder deleted
under it, a plot that cannot be written whole."""
import json

import pytest

from runs import append_log, plot_log, read_log


def test_the_log_recreates_a_deleted_run_folder(tmp_path):
    path = tmp_path / "gone" / "log.jsonl"
    append_log(str(path), {"step": 1, "val_loss": 2.0})
    assert read_log(str(path)) == [{"step": 1, "val_loss": 2.0}]


def test_a_plot_that_fails_midway_leaves_the_last_good_one(tmp_path, monkeypatch):
    import matplotlib.figure

    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps({"step": s, "train_loss": 3.0 - s / 10, "val_loss": 3.1 - s / 10}) + "\n"
                           for s in (1, 2)))
    png = tmp_path / "loss.png"
    plot_log(str(log), str(png))
    good = png.read_bytes()
    assert good.startswith(b"\x89PNG")

    def half_then_full_disk(self, f, **kwargs):
        f.write(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", half_then_full_disk)
    with pytest.raises(OSError):
        plot_log(str(log), str(png))
    assert png.read_bytes() == good and sorted(p.name for p in tmp_path.iterdir()) == ["log.jsonl", "loss.png"]


def test_files_written_whole_follow_the_umask(tmp_path):
    """Checkpoints, zips and plots are readable by whoever may read the run's other files."""
    import os

    from checkpoint import atomic_write

    old = os.umask(0o022)
    try:
        atomic_write(str(tmp_path / "a.npz"), lambda f: f.write(b"x"))
        os.umask(0o077)
        atomic_write(str(tmp_path / "b.npz"), lambda f: f.write(b"x"))
    finally:
        os.umask(old)
    assert (tmp_path / "a.npz").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.npz").stat().st_mode & 0o777 == 0o600


def test_time_bound_runs_finish_their_learning_rate_schedule():
    from runs import TrainState
    from runs import learning_rate
    from train import TrainConfig

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
    from runs import TrainState
    from runs import learning_rate
    from train import TrainConfig

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
