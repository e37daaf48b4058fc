"""elemwise_kernel.py: fused groups of elementwise ops against numpy (every supported op,
broadcast and strided inputs, NaN and inf), ops left alone, bad shapes, and the kernels kept
on disk. (Which ops form a group: tests/test_modes.py.)"""
import numpy as np
import pytest

import elemwise_kernel
import modes
import pytensor
import pytensor.tensor as pt

MODE = modes.compile_mode("CVM")


def compiled(inputs, outputs):
    return pytensor.function(inputs, outputs, mode=MODE)


def ops(f, kind):
    return [n for n in f.maker.fgraph.toposort() if isinstance(n.op, kind)]


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def test_every_supported_op_in_one_loop_matches_numpy():
    a, row, col = pt.matrix("a"), pt.row("row"), pt.col("col")  # (B, N), (1, N), (B, 1)
    y1 = pt.tanh(a * row + col) - pt.sigmoid(a) / (abs(row) + 1.5)
    y2 = pt.maximum(pt.exp(-pt.sqr(a)), pt.minimum(a, col)) + pt.log(abs(a) + 1) + pt.sqrt(abs(row))
    y3 = -a + pt.second(a, np.float32(2.5)) + pt.expm1(a) * pt.reciprocal(row + 3)
    f = compiled([a, row, col], [y1, y2, y3])
    fused = ops(f, elemwise_kernel.FusedElemwise)
    # one loop per expression over (B, N) (they share only inputs), those over row's (1, N), nothing apart
    assert len([n for n in fused if n.op.broadcastable == (False, False)]) == 3
    assert not ops(f, pytensor.tensor.elemwise.Elemwise)
    rng = np.random.default_rng(0)
    A, R, C = (rng.standard_normal(s).astype("float32") for s in ((5, 7), (1, 7), (5, 1)))
    A64, R64, C64 = (v.astype(np.float64) for v in (A, R, C))
    want = [np.tanh(A64 * R64 + C64) - sigmoid(A64) / (np.abs(R64) + 1.5),
            np.maximum(np.exp(-A64 ** 2), np.minimum(A64, C64)) + np.log(np.abs(A64) + 1) + np.sqrt(np.abs(R64)),
            2.5 - A64 + np.expm1(A64) / (R64 + 3)]
    for got, ref in zip(f(A, R, C), want):
        assert got.dtype == np.float32 and got.flags.c_contiguous
        np.testing.assert_allclose(got, ref, rtol=2e-6, atol=2e-6)


def test_three_axes_broadcast_and_strided_inputs():
    x, bias, mask = pt.tensor3("x"), pt.tensor3("bias", shape=(1, 1, None)), pt.tensor3("mask", shape=(None, None, 1))
    f = compiled([x, bias, mask], pt.tanh(x + bias) * mask + x)
    assert len(ops(f, elemwise_kernel.FusedElemwise)) == 1
    rng = np.random.default_rng(1)
    X = rng.standard_normal((4, 6, 10)).astype("float32")
    # reversed, every other row, axes swapped, and rows that are not contiguous (copied first)
    for view in (X, X[::-1], X[:, ::2], X.transpose(1, 0, 2), X[:, :, ::2]):
        Bias = rng.standard_normal((1, 1, view.shape[2])).astype("float32")
        M = (rng.random(view.shape[:2] + (1,)) > 0.3).astype("float32")
        np.testing.assert_allclose(f(view, Bias, M), np.tanh(view + Bias) * M + view, rtol=2e-6, atol=2e-6)


def test_nan_and_inf_propagate_as_in_numpy():
    x = pt.vector("x")
    f = compiled([x], [pt.maximum(x, 0) * 2, pt.sigmoid(x) * 2, pt.exp(x) * 2, pt.log(x) * 2, pt.tanh(x) * 2])
    assert len(ops(f, elemwise_kernel.FusedElemwise)) == 5
    v = np.array([np.nan, np.inf, -np.inf, 0.0, 100.0, -100.0, 1.0], dtype="float32")
    with np.errstate(all="ignore"):  # float32 throughout, as the kernels: exp(100) overflows
        want = [np.maximum(v, 0) * 2, 2 / (1 + np.exp(-v)), np.exp(v) * 2, np.log(v) * 2, np.tanh(v) * 2]
    for got, ref in zip(f(v), want):
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-30)  # NaN and inf at the same places


def test_shapes_that_do_not_broadcast_raise():
    a, b = pt.matrix("a"), pt.matrix("b")
    f = compiled([a, b], pt.tanh(a + b) * a)
    with pytest.raises(ValueError):
        f(np.ones((3, 4), "float32"), np.ones((3, 5), "float32"))
    with pytest.raises(ValueError):  # a length 1 not declared broadcastable is not broadcast
        f(np.ones((3, 4), "float32"), np.ones((1, 4), "float32"))


def test_integer_ops_and_switches_are_left_alone():
    x, n = pt.matrix("x"), pt.imatrix("n")
    f = compiled([x, n], [pt.switch(x > 0, x, 0) * 2, n * 3 + 1])
    assert not ops(f, elemwise_kernel.FusedElemwise)
    X, N = np.array([[-1.0, 2.0]], "float32"), np.array([[1, 2]], "int32")
    np.testing.assert_array_equal(f(X, N)[0], [[0.0, 4.0]])
    np.testing.assert_array_equal(f(X, N)[1], [[4, 7]])


def test_a_kernel_is_built_once_and_kept_on_disk(monkeypatch):
    x = pt.matrix("x")
    f = compiled([x], pt.tanh(x) * 3 + 1)
    (node,) = ops(f, elemwise_kernel.FusedElemwise)
    elemwise_kernel._BUILT.clear()  # a new process: the kernel comes from the compile directory

    def no_compiler(*args, **kwargs):
        raise AssertionError("the kernel was built again")

    monkeypatch.setattr(elemwise_kernel.subprocess, "run", no_compiler)
    X = np.ones((2, 2), "float32")
    run, address, spec = node.op._kernel(node)
    np.testing.assert_allclose(run(address, spec, X)[0], np.tanh(X) * 3 + 1, rtol=1e-6)
