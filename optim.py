"""Optimizers as functions that return update pairs `(shared, new_value)`, the guard that
skips a bad batch, and the learning-rate schedules.

Each module's `getUpdates` calls one of these on its own params (module.Module), with
`owner` its name. An optimizer's state (Adam's moments, its step count) is every shared
variable its updates write that is not a parameter; `Model` saves it by name
(`adam.m.encoder.W`, `adam.t.encoder`), so resume is exact.
"""
import math

import numpy as np

import flags  # noqa: F401  (first: the process's PyTensor flags, before pytensor)
import pytensor
import pytensor.tensor as pt
from pytensor.ifelse import ifelse


def global_norm(grads):
    """sqrt(sum of squares of every gradient), a float32 scalar: each sum of squares is one
    BLAS dot product (a float32 accumulation, against PyTensor's float64 sum of a squared copy:
    1.2 ms against 0.1 for a 10,000 x 256 gradient)."""
    return pt.sqrt(sum(pt.dot(g.ravel(), g.ravel()) for g in grads))


def clip_by_global_norm(grads, max_norm, norm=None):
    """Scale all gradients together so that their global norm is at most `max_norm`.

    Returns (clipped_grads, norm_before_clipping). `max_norm <= 0` turns clipping off.
    """
    norm = global_norm(grads) if norm is None else norm
    if max_norm <= 0:
        return list(grads), norm
    scale = pt.minimum(np.float32(1.0), np.float32(max_norm) / (norm + np.float32(1e-6)))
    return [g * scale for g in grads], norm


def guarded_updates(params, grads, grad_clip, make_updates):
    """Clip `grads` by global norm, ask `make_updates(clipped)` for the update pairs, and make
    every one keep its variable as it is when the norm is not finite, so that a bad batch
    never corrupts weights or optimizer state. Returns (updates, norm, state): `state` is
    the updated variables that are not in `params`, the optimizer's, for checkpoints."""
    clipped, norm = clip_by_global_norm(grads, grad_clip)
    pairs = make_updates(clipped)
    # One lazy condition for all: no pass over every weight to select its old or new value.
    variables = [var for var, _ in pairs]
    kept = ifelse(pt.isfinite(norm), [new for _, new in pairs], variables, name="finite") if pairs else []
    updates = list(zip(variables, kept))
    param_ids = {id(p) for p in params}
    return updates, norm, [var for var, _ in updates if id(var) not in param_ids]


def sgd(params, grads, lr, owner=None):
    """Plain SGD: p <- p - lr * g, what `getUpdates(cost, lr)` does by default. No state."""
    return [(p, p - lr * g) for p, g in zip(params, grads)]


def adam(params, grads, lr, owner="all", beta1=0.9, beta2=0.999, eps=1e-8):
    """Adam (Kingma & Ba 2015) with bias correction folded into the step size. The step
    count `adam.t.<owner>` counts this call's updates (a frozen module's stays put)."""
    t = pytensor.shared(np.float32(0.0), name=f"adam.t.{owner}")
    t_new = t + np.float32(1.0)
    b1, b2 = np.float32(beta1), np.float32(beta2)
    step = lr * pt.sqrt(np.float32(1.0) - b2**t_new) / (np.float32(1.0) - b1**t_new)
    updates = [(t, t_new)]
    for p, g in zip(params, grads):
        zeros = np.zeros(p.get_value(borrow=True).shape, dtype=p.dtype)
        m = pytensor.shared(zeros, name=f"adam.m.{p.name}")
        v = pytensor.shared(zeros.copy(), name=f"adam.v.{p.name}")
        m_new = b1 * m + (np.float32(1.0) - b1) * g
        v_new = b2 * v + (np.float32(1.0) - b2) * pt.sqr(g)
        updates += [(m, m_new), (v, v_new), (p, p - step * m_new / (pt.sqrt(v_new) + np.float32(eps)))]
    return updates


OPTIMIZERS = {"sgd": sgd, "adam": adam}


def decayed(start, finish, progress, shape="cosine"):
    """A learning rate that goes from `start` at progress 0 to `finish` at progress 1 and stays
    there: "cosine" (half a cosine wave), "exponential" (geometric) or "constant" (start)."""
    progress = min(max(progress, 0.0), 1.0)
    if shape == "cosine":
        return finish + 0.5 * (1.0 + math.cos(math.pi * progress)) * (start - finish)
    if shape == "exponential":
        return start * (finish / start) ** progress
    return start


def run_progress(step, elapsed_s, max_iters=0, max_minutes=0.0):
    """How far a run is, from 0 to 1: the larger of its step fraction (with a step limit)
    and its time fraction (with a time limit); 0 when neither is set."""
    fractions = [step / max_iters] if max_iters else []
    fractions += [elapsed_s / (60.0 * max_minutes)] if max_minutes else []
    return min(1.0, max(fractions, default=0.0))


def scheduled_lr(peak, floor, warmup_steps, step, progress, warmup_end):
    """Linear warm-up to `peak` over the first `warmup_steps` steps, then a cosine decay to
    `floor` over the rest of the run: from `warmup_end`, the progress at which warm-up
    ended, to progress 1. Warm-up and decay measure the same progress, so a run bounded by
    time decays smoothly from the end of its warm-up, however long that took."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    return decayed(peak, floor, (progress - warmup_end) / max(1e-9, 1.0 - warmup_end), "cosine")
