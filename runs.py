"""A run's folder (out/<dataset> unless told): who may write it, its log, its snapshots.

    run_dir(out_dir, dataset)     where a run lives; train.py, sample.py and evaluate.py agree
    RunFolder(path)               the lock a training run holds while it writes the folder
    read_log(path), append_log    log.jsonl: one JSON object per evaluation, checked on reading
    keep_snapshots(latest, ...)   ckpt_step<N>.npz copies of the last N evaluations
    plot_log(log, png)            loss.png from log.jsonl

Every problem is a RunError with one line naming the file.
"""
import fcntl
import json
import os
import re
import shutil

from checkpoint import atomic_write

SNAPSHOT = re.compile(r"ckpt_step(\d+)\.npz")


class RunError(ValueError):
    """A run folder that cannot be used as asked; the message names it and the way on."""


ROOT = os.path.dirname(os.path.abspath(__file__))


def run_dir(out_dir, dataset):
    """out_dir when given, else the repository's out/<the dataset's folder name>: found from
    any working directory, as the datasets under data/ are."""
    return out_dir or os.path.join(ROOT, "out", os.path.basename(os.path.normpath(dataset)))


class RunFolder:
    """Creates the folder and takes an exclusive lock on <folder>/.lock (fcntl), held until
    the process ends: the OS drops it when the process dies, even by SIGKILL, so it never
    goes stale. A second process is refused in one line naming the holder."""

    def __init__(self, path):
        self.path = path
        if os.path.exists(path) and not os.path.isdir(path):
            raise RunError(f"out_dir={path}: is a file, not a folder")
        try:
            os.makedirs(path, exist_ok=True)
            self._fd = os.open(os.path.join(path, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise RunError(f"out_dir={path}: cannot write there ({err.strerror})") from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 64, 0).decode("ascii", "replace").strip() or "another process"
            os.close(self._fd)
            raise RunError(f"out_dir={path}: in use by another training run (pid {holder}); "
                           "wait for it to end, or use another --out_dir") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, str(os.getpid()).encode(), 0)

    def holds_a_run(self):
        """A description of the run already here (checkpoint or logged evaluations), or None."""
        log = os.path.join(self.path, "log.jsonl")
        ckpt = os.path.join(self.path, "ckpt_latest.npz")
        if os.path.exists(ckpt):
            return f"{ckpt} exists"
        if os.path.isfile(log) and os.path.getsize(log) > 0:
            return f"{log} holds evaluations"
        return None


    def clear(self):
        """Remove the checkpoints and log of the run here (a scratch run with --overwrite),
        leaving an empty log.jsonl."""
        for name in os.listdir(self.path):
            path = os.path.join(self.path, name)
            if os.path.isfile(path) and (name == "log.jsonl" or (name.startswith("ckpt_") and name.endswith(".npz"))):
                os.remove(path)
        write_log(os.path.join(self.path, "log.jsonl"), [])


def read_log(path, upto=None):
    """The rows of log.jsonl (none if it does not exist). A last line cut short by a crash is
    dropped; any other bad line is an error naming it. With `upto`, rows after that step
    (logged after the checkpoint a run resumes from) are dropped too."""
    if not os.path.exists(path):
        return []
    if not os.path.isfile(path):
        raise RunError(f"{path}: not a file")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        lines = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise RunError(f"{path}: not UTF-8 (byte offset {err.start}); move it away to start a new log") from None
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("step"), int) or isinstance(row["step"], bool):
                raise ValueError("no integer step")
        except ValueError as err:
            if number == len(lines) and not raw.endswith(b"\n"):
                break  # the line a crash cut short
            raise RunError(f"{path}:{number}: not a log row ({err}); fix or delete that line") from None
        rows.append(row)
    return [r for r in rows if upto is None or r["step"] <= upto]


def write_log(path, rows):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    os.replace(tmp, path)


def append_log(path, row):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)  # a run folder deleted under us
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def keep_snapshots(latest, step, keep):
    """Hard-link the just-written ckpt_latest.npz as ckpt_step<step>.npz (a copy where links
    are not supported) and delete all but the newest `keep` of those."""
    if not keep:
        return
    folder = os.path.dirname(latest) or "."
    snapshot = os.path.join(folder, f"ckpt_step{step}.npz")
    tmp = snapshot + ".tmp"
    if os.path.exists(tmp):
        os.remove(tmp)
    try:
        os.link(latest, tmp)
    except OSError:
        shutil.copyfile(latest, tmp)
    os.replace(tmp, snapshot)
    steps = sorted(int(m.group(1)) for m in map(SNAPSHOT.fullmatch, os.listdir(folder)) if m)
    for old in steps[:-keep]:
        os.remove(os.path.join(folder, f"ckpt_step{old}.npz"))


def plot_log(log_path, png_path):
    """loss.png: train and val loss against step, from log.jsonl; written whole or not at all
    (a full disk leaves the last good plot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_log(log_path)
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in ("train_loss", "val_loss"):
        points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        if points:
            ax.plot(*zip(*points), marker="o", label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy per token (nats)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        atomic_write(png_path, lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)
