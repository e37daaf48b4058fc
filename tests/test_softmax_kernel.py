"""The fused softmax cross-entropy (C, and its numpy perform) against numpy/scipy: values,
gradients, threads, strided input, bad targets, non-finite logits kept visible; log_softmax."""
import numpy as np
import pytest
import scipy.special

import modes
import softmax_kernel
import pytensor
import pytensor.tensor as pt

MODE = modes.compile_mode()


@pytest.fixture(scope="module")
def sce():
    """f(x, y, w) -> (nll, d sum(w * nll) / dx), compiled once (C) and as numpy (Python)."""
    x, y, w = pt.matrix("x"), pt.ivector("y"), pt.vector("w")
    nll = softmax_kernel.softmax_cross_entropy(x, y)
    outs = [nll, pytensor.grad((nll * w).sum(), x)]
    python = pytensor.compile.mode.Mode(linker=pytensor.link.vm.VMLinker(c_thunks=False), optimizer="fast_run")
    return pytensor.function([x, y, w], outs, mode=MODE), pytensor.function([x, y, w], outs, mode=python)


def sce_reference(x, y, w):
    x64 = x.astype(np.float64)
    nll = scipy.special.logsumexp(x64, axis=1) - x64[np.arange(len(y)), y]
    grad = scipy.special.softmax(x64, axis=1) * w[:, None]
    grad[np.arange(len(y)), y] -= w
    return nll, grad


@pytest.mark.parametrize("n, v", [(1, 1), (3, 7), (70, 5000)])  # 350k logits: one thread; bigger: OpenMP
def test_softmax_cross_entropy_matches_reference(sce, n, v):
    rng = np.random.default_rng(v)
    x = (rng.standard_normal((n, v)) * 8).astype("float32")
    y = rng.integers(0, v, n).astype("int32")
    w = rng.standard_normal(n).astype("float32")
    want_nll, want_grad = sce_reference(x, y, w)
    for f in sce:  # the C kernel and the numpy perform
        nll, grad = f(x, y, w)
        np.testing.assert_allclose(nll, want_nll, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-6)


def test_softmax_cross_entropy_parallel_rows_and_strided_input(sce):
    """Over the OpenMP threshold (2^20 logits), and a non-contiguous (transposed) input."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2000, 700)).astype("float32")
    y = rng.integers(0, 700, 2000).astype("int32")
    w = np.ones(2000, "float32")
    nll, grad = sce[0](x, y, w)
    want_nll, want_grad = sce_reference(x, y, w)
    np.testing.assert_allclose(nll, want_nll, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(grad, want_grad, atol=1e-6)
    strided = np.asfortranarray(x)
    np.testing.assert_array_equal(sce[0](strided, y, w)[0], nll)


def test_softmax_cross_entropy_rejects_out_of_range_targets(sce):
    x = np.zeros((2, 5), "float32")
    with pytest.raises(ValueError, match=r"target 5 at row 1 is outside \[0, 5\)"):
        sce[0](x, np.array([0, 5], "int32"), np.ones(2, "float32"))


def test_softmax_cross_entropy_keeps_nan_and_inf_visible(sce):
    """Built with -ffast-math, the kernel must still turn NaN or +inf logits into a non-finite
    loss and gradient: train.py's non-finite guard relies on it. -inf is a legal logit."""
    x = np.zeros((4, 5), "float32")
    x[0, 1], x[1, 2], x[2, 3], x[3, 0] = np.nan, np.inf, -np.inf, 1e30
    nll, grad = sce[0](x, np.zeros(4, "int32"), np.ones(4, "float32"))
    assert not np.isfinite(nll[:2]).any() and not np.isfinite(grad[:2]).all(axis=1).any()
    np.testing.assert_allclose(nll[2:], [np.log(4), 0.0], atol=1e-6)
    assert np.isfinite(grad[2:]).all()


def test_log_softmax_matches_reference():
    x = pt.matrix("x")
    f = pytensor.function([x], softmax_kernel.log_softmax(x), mode=MODE)
    for n, v in [(1, 1), (4, 9), (300, 6000)]:  # the last on OpenMP's threads
        logits = (np.random.default_rng(v).standard_normal((n, v)) * 8).astype("float32")
        np.testing.assert_allclose(f(logits), scipy.special.log_softmax(logits.astype(np.float64), axis=1),
                                   rtol=1e-5, atol=1e-5)
