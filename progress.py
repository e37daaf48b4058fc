"""What a training run shows while it trains: the progress bar, by steps or by minutes, and
one-line notes on the run's length (many epochs over a small corpus, a warm-up longer than
half the run)."""
import sys

import numpy as np
from tqdm import tqdm


class Progress:
    """The progress bar: minutes against max_minutes when a run has a time limit (with the
    step count beside the loss), otherwise steps against max_iters."""

    def __init__(self, cfg, state, elapsed_s, enabled):
        self.by_time = bool(cfg.max_minutes)
        total, done = (cfg.max_minutes, elapsed_s / 60) if self.by_time else (cfg.max_iters, state.step)
        # Redraw twice a second on a terminal; every 30 s in a log file, which keeps it readable.
        self.bar = tqdm(total=total, initial=done, unit="min" if self.by_time else "step", dynamic_ncols=True,
                        mininterval=0.5 if sys.stderr.isatty() else 30, disable=not enabled,
                        bar_format="{l_bar}{bar}| {n:.1f}/{total:.0f} min [{elapsed}<{remaining}{postfix}]"
                        if self.by_time else None)

    def update(self, state, elapsed_s, **postfix):
        if self.by_time:
            postfix = {"step": state.step, **postfix}
            self.bar.update(min(elapsed_s / 60, self.bar.total) - self.bar.n)
        else:
            self.bar.update(1)
        self.bar.set_postfix(refresh=False, **postfix)

    def write(self, line):
        self.bar.write(line)

    def close(self):
        self.bar.close()


def notices(run, elapsed_s):
    """One-line notes on a run's length, said once its speed is known (after its first
    `eval_interval` steps, or at the start for a run bounded by steps): many epochs over a
    small corpus, and a warm-up longer than half the run."""
    cfg, state = run.cfg, run.state
    n_train, lines, steps = len(run.splits["train"]), [], cfg.max_iters
    if cfg.max_minutes and state.step:  # the steps that fit in the time limit at this speed
        by_time = int(state.step * 60 * cfg.max_minutes / max(elapsed_s, 1e-9))
        steps = min(steps, by_time) if steps else by_time
    per_step = cfg.batch_size
    if cfg.batch_tokens:  # pairs a step by tokens: about batch_tokens / the mean pair length
        mean_length = float(np.mean([max(len(s), len(t)) for s, t in run.splits["train"]]))
        per_step = max(1.0, cfg.batch_tokens / max(1.0, mean_length))
    epochs = steps * per_step / max(1, n_train)
    about = "" if not cfg.max_minutes or cfg.max_iters else "about "
    if epochs > 20:
        lines.append(f"note: {about}{steps:,} steps of {per_step:.0f} are {epochs:.0f} epochs of {n_train:,} training "
                     "pairs; expect overfitting: --patience=N stops when val loss stops improving, and the model's "
                     "dropout settings regularise (--help)")
    if cfg.warmup_iters > steps / 2:
        lines.append(f"warning: warmup_iters={cfg.warmup_iters} is {100 * cfg.warmup_iters / max(1, steps):.0f}% "
                     f"of the run ({about}{steps:,} steps); the peak learning rate comes late or never")
    return lines
