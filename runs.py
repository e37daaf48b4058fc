"""A run's folder (out/<dataset> unless told): who may write it, its log, its snapshots.

    run_dir(out_dir, dataset)     where a run lives; train.py, sample.py and evaluate.py agree
    RunFolder(path)               the lock a training run holds while it writes the folder
    read_log(path), append_log    log.jsonl: one JSON object per evaluation, checked on reading
    keep_snapshots(latest, ...)   ckpt_step<N>.npz copies of the last N evaluations
    plot_log(log, png)            loss.png from log.jsonl
    TrainState, Run               where a training run is (saved in every checkpoint), and all it reads
    learning_rate(cfg, state, s)  the schedule: warm-up, then cosine decay over steps, time or both
    evaluate_and_checkpoint(run)  validate, log, save best and latest, plot

Every problem is a RunError with one line naming the file.
"""
import dataclasses
import fcntl
import json
import math
import os
import re
import shutil
from dataclasses import dataclass

import optim
from checkpoint import atomic_write, checkpoint_path
from dataset import prepared_facts
from scoring import validation_metrics

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
        """Remove the checkpoints and logs of the run here (a scratch run with --overwrite),
        leaving an empty log.jsonl."""
        for name in os.listdir(self.path):
            path = os.path.join(self.path, name)
            if os.path.isfile(path) and (name in RUN_FILES or (name.startswith("ckpt_") and name.endswith(".npz"))):
                os.remove(path)
        shutil.rmtree(os.path.join(self.path, "tensorboard"), ignore_errors=True)
        write_log(os.path.join(self.path, "log.jsonl"), [])


# What a run writes beside its checkpoints: evaluations, the loss every log_interval steps,
# the console's lines, its settings, the plot.
RUN_FILES = ("log.jsonl", "steps.jsonl", "train.log", "settings.toml", "loss.png")


class ConsoleLog:
    """stdout, with every line also appended to a file (<out_dir>/train.log): what a run
    said stays with it. The progress bar (stderr) is not copied."""

    def __init__(self, stream, path):
        self.stream, self.file = stream, open(path, "a", encoding="utf-8")

    def write(self, text):
        self.file.write(text)
        self.file.flush()
        return self.stream.write(text)

    def __getattr__(self, name):  # flush, isatty, encoding, ... as the stream's
        return getattr(self.stream, name)


def tensorboard_installed():
    """Whether TensorBoard's writer (tensorboardX, requirements-tensorboard.txt) imports."""
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        return False
    return True


def write_settings(path, configs, skip=("init_from", "out_dir", "overwrite")):
    """settings.toml: every setting of the dataclasses `configs` (not the derived ones nor
    `skip`), a config file `python train.py <it>` reads back; written with each ckpt_latest.npz."""
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        return json.dumps(v) if isinstance(v, str) else repr(v)  # floats: inf and nan are TOML too

    lines = ["# This run's settings: python train.py <this file> --out_dir=<another folder> trains it again."]
    lines += [f"{f.name} = {value(getattr(c, f.name))}" for c in configs for f in dataclasses.fields(c)
              if not f.metadata.get("derived") and f.name not in skip]
    atomic_write(path, lambda f: f.write(("\n".join(lines) + "\n").encode("utf-8")))


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
    """loss.png: train and val loss against step, from log.jsonl, and the train loss of every
    log_interval steps from steps.jsonl beside it; written whole or not at all (a full disk
    leaves the last good plot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_log(log_path)
    fig, ax = plt.subplots(figsize=(6, 4))
    steps = [(r["step"], r["train_loss"]) for r in read_log(os.path.join(os.path.dirname(log_path), "steps.jsonl"))]
    if steps:
        ax.plot(*zip(*steps), linewidth=0.8, alpha=0.6, label="train_loss (every log_interval steps)")
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


@dataclass
class TrainState:
    """Where a run is; saved in every checkpoint, so resume continues exactly."""
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_val_loss: float | None = None
    best_step: int = 0
    evals_since_best: int = 0  # for patience
    warmup_end: float | None = None  # the run's progress when warm-up ended (optim.scheduled_lr)
    tokens: int = 0
    skipped_nonfinite: int = 0
    train_seconds: float = 0.0  # training time of the invocations before this one


def learning_rate(cfg, state, elapsed_s=0.0):
    """Linear warm-up, then cosine decay from learning_rate to min_lr as the run progresses
    (by steps, by time, or both: optim.run_progress), from the end of warm-up to the end."""
    progress = optim.run_progress(state.step, elapsed_s, cfg.max_iters, cfg.max_minutes)
    if state.step >= cfg.warmup_iters and state.warmup_end is None:
        state.warmup_end = progress
    return optim.scheduled_lr(cfg.learning_rate, cfg.min_lr, cfg.warmup_iters, state.step, progress,
                              state.warmup_end or 0.0)


def say_changes(before, after, state):
    """Print the training settings a resume changes (from flags or a config file), and, where
    the schedule changes, the learning rate before and after."""
    changed = [f.name for f in dataclasses.fields(before) if f.name not in ("init_from", "out_dir")
               and getattr(before, f.name) != getattr(after, f.name)]
    if not changed:
        return
    print("resuming with changed settings: " + ", ".join(f"{k} {getattr(before, k)} -> {getattr(after, k)}"
                                                         for k in changed))
    if set(changed) & {"max_iters", "max_minutes", "learning_rate", "min_lr", "warmup_iters"}:
        now = [learning_rate(c, dataclasses.replace(state), state.train_seconds) for c in (before, after)]
        print(f"  the learning rate at step {state.step} goes from {now[0]:.3g} to {now[1]:.3g} "
              f"(the schedule now ends at max_iters={after.max_iters}, max_minutes={after.max_minutes:g})")


@dataclass
class Run:
    """Everything the loop reads: settings, model, data and where things go."""
    cfg: object  # train.TrainConfig
    model: object  # model.Model
    state: TrainState
    meta: dict
    splits: dict
    references: list | None
    comm: object  # the MPI communicator, None in one process
    folder: RunFolder | None  # rank 0's locked out_dir; None on the other ranks
    run_id: str
    tensorboard: object = None  # the TensorBoard writer, made at the first row (cfg.tensorboard)

    @property
    def is_root(self):
        return self.comm is None or self.comm.Get_rank() == 0

    def log(self, name, row):
        """Append `row` to the run's <name>.jsonl (log.jsonl, steps.jsonl) and, with
        --tensorboard, write its numbers as TensorBoard scalars <name>/<key> at row["step"]."""
        append_log(self.path(name), row)
        if self.cfg.tensorboard:
            from tensorboardX import SummaryWriter

            self.tensorboard = self.tensorboard or SummaryWriter(self.path("tensorboard"))
            for key, value in row.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
                    self.tensorboard.add_scalar(f"{name.removesuffix('.jsonl')}/{key}", value, row["step"])
            self.tensorboard.flush()

    def path(self, name):
        return checkpoint_path(self.cfg.out_dir, name) if name in ("latest", "best") else \
            os.path.join(self.cfg.out_dir, name)


def save_run(run, name):
    """Write the model and the run's state to ckpt_<name>.npz; the file already there stays
    whole if this fails (and is never replaced by non-finite weights)."""
    path = run.path(name)
    state = dataclasses.asdict(run.state)
    state["train_config"] = dataclasses.asdict(run.cfg)
    state["data"] = {"dataset": run.cfg.dataset, "reverse_source": bool(run.meta.get("reverse_source")),
                     "prepared": prepared_facts(run.meta)}
    run.model.save(path, state)
    if name == "latest":  # the settings of the run as its latest checkpoint holds it
        write_settings(run.path("settings.toml"), [run.cfg, run.model.config])


def evaluate_and_checkpoint(run, row):
    """Validate, log the row, plot, and save best (if better) and latest. Returns None, or
    why the run must stop: a non-finite val loss is neither logged nor checkpointed."""
    cfg, state = run.cfg, run.state
    metrics = validation_metrics(run.model, run.splits["val"], cfg.batch_size, cfg.max_decode_len,
                                 cfg.eval_exact_match if run.meta.get("exact_match") else 0, cfg.eval_bleu, run.references)
    row.update(metrics, run_id=run.run_id, skipped_nonfinite=state.skipped_nonfinite)
    if not math.isfinite(metrics["val_loss"]):
        return f"stopped: step {state.step}: val loss {metrics['val_loss']}; neither logged nor checkpointed"
    run.log("log.jsonl", row)
    if state.best_val_loss is None or metrics["val_loss"] < state.best_val_loss:
        state.best_val_loss, state.best_step, state.evals_since_best = metrics["val_loss"], state.step, 0
        save_run(run, "best")
    else:
        state.evals_since_best += 1
    save_run(run, "latest")
    keep_snapshots(run.path("latest"), state.step, cfg.keep_last)
    plot_log(run.path("log.jsonl"), run.path("loss.png"))  # after the checkpoints: the plot matters least
    if cfg.patience and state.evals_since_best >= cfg.patience:
        return "patience"
    return None
