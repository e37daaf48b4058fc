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
