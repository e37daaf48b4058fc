"""The fused softmax cross-entropy (C, and its numpy perform) against numpy/scipy: values,
gradients, threads, strided input, bad targets, non-finite logits kept visible; log_softmax;
greedy_pick."""
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


@pytest.fixture(scope="module")
def pick():
    """f(x) -> (ids, logp) of greedy_pick(x, first=3), compiled (C) and as numpy (Python)."""
    x = pt.matrix("x")
    outs = list(softmax_kernel.greedy_pick(x, 3))
    python = pytensor.compile.mode.Mode(linker=pytensor.link.vm.VMLinker(c_thunks=False), optimizer="fast_run")
    return pytensor.function([x], outs, mode=MODE), pytensor.function([x], outs, mode=python)


@pytest.mark.parametrize("n, v", [(1, 4), (5, 9), (70, 5000), (300, 6000)])  # the last on OpenMP's threads
def test_greedy_pick_is_the_argmax_from_first_and_its_log_probability(pick, n, v):
    rng = np.random.default_rng(v)
    x = (rng.standard_normal((n, v)) * 8).astype("float32")
    x[0, :3] = 1e3  # the row's largest logits lie below `first`: never picked, but in the softmax
    x[-1, 3:] = 2.0  # a tie: the first of the maxima, as np.argmax
    want_ids = x[:, 3:].argmax(axis=1) + 3
    want_logp = scipy.special.log_softmax(x.astype(np.float64), axis=1)[np.arange(n), want_ids]
    for f in pick:  # the C kernel and the numpy perform
        ids, logp = f(x)
        assert ids.dtype == np.int32
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_allclose(logp, want_logp, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(pick[0](np.asfortranarray(x))[0], want_ids)  # strided input


def test_greedy_pick_keeps_non_finite_logits_visible_and_rejects_too_few_ids(pick):
    x = np.zeros((3, 6), "float32")
    x[0, 4], x[1, 1], x[2, 5] = np.nan, np.inf, -np.inf
    ids, logp = pick[0](x)
    assert not np.isfinite(logp[:2]).any()
    assert ids[2] == 3 and np.isclose(logp[2], -np.log(5))
    for f in pick:
        with pytest.raises(ValueError, match="3 logits per row, none from id 3 on"):
            f(np.zeros((2, 3), "float32"))
