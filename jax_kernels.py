"""The fused softmax cross-entropy (softmax_kernel.py) for PyTensor's JAX backend.

Under `--mode=JAX` every graph is lowered to JAX, and an op of our own needs a JAX function
of its own (`jax_funcify.register`), or compilation stops at "No JAX conversion". These are
the equations of SoftmaxCrossEntropy, its gradient and GreedyPick, in jax.numpy; XLA fuses
them. The loop ops (recurrence.StepLoop, gru_kernel.GRUSequence) have none: under JAX they
step aside and every cell runs under pytensor.scan, which becomes one jax.lax.scan
(modes.fast_loops).

`register()` is called by modes.compile_mode("JAX"), so jax is only needed by those who choose it.
"""
import warnings

import jax.numpy as jnp
from jax.nn import logsumexp

from softmax_kernel import GreedyPick, SoftmaxCrossEntropy, SoftmaxCrossEntropyGrad  # first: it sets PyTensor's flags
from pytensor.link.jax.dispatch import jax_funcify  # noqa: E402


def _forward(x, y):
    """(nll (N,), logsumexp (N,)) of logits x (N, V) at labels y (N,)."""
    lse = logsumexp(x, axis=1)
    return lse - jnp.take_along_axis(x, y[:, None], axis=1)[:, 0], lse


def _backward(x, y, lse, g_nll, g_lse):
    """The gradient with respect to x (N, V) of g_nll . nll + g_lse . lse."""
    probs = jnp.exp(x - lse[:, None]) * (g_nll + g_lse)[:, None]
    return probs.at[jnp.arange(x.shape[0]), y].add(-g_nll)


def _greedy(first):
    """x (N, V) -> (each row's argmax over ids >= first (N,) int32, its log-probability (N,))."""
    def pick(x):
        ids = jnp.argmax(x[:, first:], axis=1).astype("int32") + first
        return ids, jnp.take_along_axis(x, ids[:, None], axis=1)[:, 0] - logsumexp(x, axis=1)
    return pick


def register():
    """Register the JAX versions of the project's ops (idempotent)."""
    # Expected under JAX, said once in the README instead of at every compilation: the dropout
    # generator is copied into JAX's own; shape assertions are checked when the graph is built;
    # 64-bit accumulators and indices are 32-bit (JAX's default).
    for message in ("The RandomType SharedVariables", "Skipping Assert", "Explicitly requested dtype"):
        warnings.filterwarnings("ignore", message=message)
    jax_funcify.register(SoftmaxCrossEntropy)(lambda op, **kwargs: _forward)
    jax_funcify.register(SoftmaxCrossEntropyGrad)(lambda op, **kwargs: _backward)
    jax_funcify.register(GreedyPick)(lambda op, **kwargs: _greedy(op.first))
