"""Cheap ops run from Python (thunks.py): which ops of a model's functions run from Python and
which stay in C, output buffers never shared with results, no PyTensor class changed."""
import subprocess
import sys

import numpy as np
import pytest

import modes
import flags
import pytensor
import thunks
import pytensor.tensor as pt
import decode
from model import Model, ModelConfig
from pytensor.tensor.elemwise import Elemwise


def nodes_and_thunks(fn):
    """(node, thunk) of every node of a compiled function, scan's inner functions included."""
    pairs = []
    for node, thunk in zip(fn.vm.nodes, fn.vm.thunks):
        pairs.append((node, thunk))
        if type(node.op).__name__ == "Scan":
            pairs += nodes_and_thunks(node.op.fn)
    return pairs


def thunk_kinds(fn):
    """{op name: {"C" and/or "Python"}} over every node of a compiled function."""
    kinds = {}
    for node, thunk in nodes_and_thunks(fn):
        op = node.op.op if isinstance(node.op, thunks.FromPython) else node.op
        kinds.setdefault(type(op).__name__, set()).add("C" if hasattr(thunk, "cthunk") else "Python")
    return kinds


@pytest.fixture(scope="module")
def model():
    return Model(ModelConfig(src_vocab_size=13, tgt_vocab_size=13, embed_size=6, hidden_size=8))


def test_cheap_ops_run_from_python_and_the_rest_in_c(model):
    """Views, shapes, matmuls and every elementwise op (one numpy ufunc each) run from
    Python; what stays C is the fused kernels, some reductions and casts."""
    allowed_c = {"SoftmaxCrossEntropy", "SoftmaxCrossEntropyGrad", "GreedyPick", "Sum", "All", "AdvancedIncSubtensor1",
                 "Elemwise", "Scan"}
    for fn in (model.compile_train("adam", 1.0), decode.compile_decode(model, greedy=True)):
        kinds = thunk_kinds(fn)
        in_c = {name for name, k in kinds.items() if "C" in k}
        assert in_c <= allowed_c, in_c - allowed_c
        for name in ("Reshape", "DimShuffle", "Subtensor", "Dot22"):
            if name in kinds:
                assert kinds[name] == {"Python"}, name
        elemwise_c = {str(n.op) for n, t in nodes_and_thunks(fn) if isinstance(n.op, Elemwise) and hasattr(t, "cthunk")}
        assert all(op.startswith(("Cast", "Or")) for op in elemwise_c), elemwise_c
        assert "Python" in kinds["Elemwise"]


def test_ufunc_buffers_are_not_shared_with_results():
    """A reused output buffer never aliases a value already returned to the caller."""
    x = pt.vector("x", dtype="float32")
    fn = pytensor.function([x], [pt.tanh(x * 2) + 1, x * 2], mode=modes.compile_mode())
    first = fn(np.ones(3, "float32"))
    kept = [a.copy() for a in first]
    fn(np.full(3, 2.0, "float32"))
    for a, b in zip(first, kept):
        np.testing.assert_array_equal(a, b)


def test_importing_the_project_changes_no_pytensor_class():
    """The project's modes choose Python thunks by a rewrite of their own graphs
    (thunks.FromPython): every PyTensor op class keeps its own make_thunk."""
    script = """
import sys; sys.path.insert(0, ".")
import pytensor.tensor
from pytensor.tensor.elemwise import CAReduce, Elemwise
from thunks import _VIEW_AND_SHAPE_OPS
classes = (*_VIEW_AND_SHAPE_OPS, Elemwise, CAReduce)
before = {c: c.__dict__.get("make_thunk") for c in classes}
import modes, model
m = model.Model(model.ModelConfig(src_vocab_size=9, tgt_vocab_size=9, embed_size=4, hidden_size=4))
m.compile_eval()
print(sum(c.__dict__.get("make_thunk") is not before[c] for c in classes))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=flags.ROOT)
    assert out.stdout.strip() == "0", out.stderr[-2000:]


@pytest.mark.parametrize("shape, axis, where", [((5, 3, 7), (0, 1), "Python"), ((5, 3, 7), (1, 0), "Python"),
                                                ((6, 4), (0,), "Python"), ((0, 3, 2), (0, 1), "Python"),
                                                ((5, 3, 7), (2,), "Python"), ((5, 3, 7), (2, 1), "Python"),
                                                ((4, 0, 3), (1, 2), "Python"), ((5, 3, 7), (1,), "C")])
def test_float32_sums_over_leading_or_trailing_axes_are_one_blas_product(shape, axis, where):
    """A sum over the leading axes (a bias's gradient) or the trailing ones runs from Python as
    a product with ones (float32 accumulation), equal to numpy's float64 sum; a sum over a
    middle axis is left to C."""
    x = pt.tensor("x", dtype="float32", shape=(None,) * len(shape))
    fn = pytensor.function([x], x.sum(axis=axis), mode=modes.compile_mode())
    assert thunk_kinds(fn)["Sum"] == {where}
    value = np.random.default_rng(0).standard_normal(shape).astype("float32")
    for v in (value, value[::-1]):  # contiguous, and a reversed view
        got = fn(v)
        assert got.dtype == np.float32 and got.shape == np.sum(v, axis=axis).shape
        np.testing.assert_allclose(got, np.sum(v.astype(np.float64), axis=axis), rtol=1e-5, atol=1e-5)


def test_rows_added_to_a_table_sum_repeated_indices_as_numpy_add_at():
    """x[idx] += y (an embedding's gradient) runs from Python as a sparse product: repeated
    and negative indices summed as np.add.at does, x left as it was, a bad index refused."""
    x, y, idx = pt.matrix("x", dtype="float32"), pt.matrix("y", dtype="float32"), pt.vector("idx", dtype="int64")
    fn = pytensor.function([x, y, idx], pt.inc_subtensor(x[idx], y), mode=modes.compile_mode())
    assert thunk_kinds(fn)["AdvancedIncSubtensor1"] == {"Python"}
    rng = np.random.default_rng(0)
    table = rng.standard_normal((6, 3)).astype("float32")
    for ids in ([1, 4, 1, -1, 5, 0, 1], [], [2]):
        ids = np.array(ids, "int64")
        rows = rng.standard_normal((len(ids), 3)).astype("float32")
        want = table.copy()
        np.add.at(want, ids, rows)
        np.testing.assert_allclose(fn(table, rows, ids), want, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(table, np.random.default_rng(0).standard_normal((6, 3)).astype("float32"))
    for bad in (6, -7):
        with pytest.raises(IndexError, match="out of bounds"):
            fn(table, np.ones((2, 3), "float32"), np.array([0, bad], "int64"))


@pytest.mark.parametrize("shape", [(3, 5), (64, 1), (1, 7), (257, 130), (0, 4)])
@pytest.mark.parametrize("blas", [True, False])
def test_a_matrix_stored_transposed_is_made_contiguous_as_numpy_does(shape, blas, monkeypatch):
    """thunks.contiguous (the loops' U^T, once per loop): OpenBLAS's transpose where numpy's
    wheel has it, numpy's copy otherwise; other arrays as np.ascontiguousarray."""
    if not blas:
        monkeypatch.setattr(thunks, "_omatcopy", lambda: None)
    a = np.random.default_rng(0).standard_normal(shape[::-1]).astype("float32")
    for x in (a.T, a, a.astype("float64").T, a[:, ::2].T):
        got = thunks.contiguous(x)
        assert got.flags.c_contiguous and got.dtype == x.dtype
        np.testing.assert_array_equal(got, x)
