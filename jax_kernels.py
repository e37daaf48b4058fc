"""The fused softmax cross-entropy of kernels.py for PyTensor's JAX backend.

Under `--mode=JAX` every graph is lowered to JAX, and an op of our own needs a JAX function
of its own (`jax_funcify.register`), or compilation stops at "No JAX conversion". These are
the equations of kernels.SoftmaxCrossEntropy and its gradient, in jax.numpy; XLA fuses them.
The loop ops (recurrence.StepLoop, kernels.GRUSequence) have none: under JAX they step aside
and every cell runs under pytensor.scan, which becomes one jax.lax.scan (backend.host_loops).

Imported by backend.compile_mode("JAX"), so jax is only needed by those who choose it.
"""
import warnings

import jax.numpy as jnp
from jax.nn import logsumexp
from pytensor.link.jax.dispatch import jax_funcify

from kernels import SoftmaxCrossEntropy, SoftmaxCrossEntropyGrad

# Expected under JAX, said once in the README instead of at every compilation: the dropout
# generator is copied into JAX's own; shape assertions are checked when the graph is built;
# 64-bit accumulators and indices are 32-bit (JAX's default).
for message in ("The RandomType SharedVariables", "Skipping Assert", "Explicitly requested dtype"):
    warnings.filterwarnings("ignore", message=message)


@jax_funcify.register(SoftmaxCrossEntropy)
def _softmax_cross_entropy(op, **kwargs):
    def forward(x, y):
        lse = logsumexp(x, axis=1)
        return lse - jnp.take_along_axis(x, y[:, None], axis=1)[:, 0], lse

    return forward


@jax_funcify.register(SoftmaxCrossEntropyGrad)
def _softmax_cross_entropy_grad(op, **kwargs):
    def backward(x, y, lse, g_nll, g_lse):
        probs = jnp.exp(x - lse[:, None]) * (g_nll + g_lse)[:, None]
        return probs.at[jnp.arange(x.shape[0]), y].add(-g_nll)

    return backward
