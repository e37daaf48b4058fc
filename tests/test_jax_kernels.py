"""The JAX version of the fused softmax cross-entropy (jax_kernels.py) against the op's own
numpy implementation: values and the gradient, with weights on both outputs; the greedy pick."""
import numpy as np
import pytest

pytest.importorskip("jax")

import jax_kernels  # noqa: E402
from softmax_kernel import GreedyPick, SoftmaxCrossEntropy, SoftmaxCrossEntropyGrad  # noqa: E402


def perform(op, *inputs):
    outputs = [[None] for _ in range(2)]
    op.perform(None, inputs, outputs)
    return [o[0] for o in outputs if o[0] is not None]


def test_forward_and_backward_equal_the_ops_numpy_perform():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((6, 9)) * 5).astype("float32")
    y = rng.integers(0, 9, 6).astype("int32")
    g_nll, g_lse = rng.standard_normal(6).astype("float32"), rng.standard_normal(6).astype("float32")
    nll, lse = perform(SoftmaxCrossEntropy(), x, y)
    jax_nll, jax_lse = jax_kernels._forward(x, y)
    np.testing.assert_allclose(jax_nll, nll, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(jax_lse, lse, rtol=1e-5, atol=1e-5)
    (dx,) = perform(SoftmaxCrossEntropyGrad(), x, y, lse, g_nll, g_lse)
    np.testing.assert_allclose(jax_kernels._backward(x, y, lse, g_nll, g_lse), dx, rtol=1e-5, atol=1e-6)


def test_greedy_pick_equals_the_ops_numpy_perform():
    x = (np.random.default_rng(1).standard_normal((5, 11)) * 5).astype("float32")
    x[0, :4] = 100.0  # the row's largest logits are below `first`: not picked, but in the softmax
    ids, logp = perform(GreedyPick(3), x)
    jax_ids, jax_logp = jax_kernels._greedy(3)(x)
    np.testing.assert_array_equal(jax_ids, ids)
    assert jax_ids.dtype == np.int32 and ids[0] >= 3
    np.testing.assert_allclose(jax_logp, logp, rtol=1e-5, atol=1e-5)
