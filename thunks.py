"""Fewer C modules to compile: cheap ops run from Python, chosen by a rewrite of the graph.

Every distinct C op costs one gcc run on a cold cache. Ops that only move views and shapes,
concatenations, and elementwise ops that map to one numpy ufunc (all of them, in
modes.compile_mode's modes), run as fast from Python, so they skip compilation. A ufunc
writes into its previous output buffer, or in place into the input the graph lets it
destroy: a fresh (T, B, V) array per call cost more than the operation itself. Overflow in
exp and the like gives inf or NaN silently, as the C code does: the non-finite guards in
training check for them. A float32 sum over a leading or a trailing block of axes (a bias's
gradient, a dot with a vector) is one BLAS product with ones, accumulated in float32; other
sums that include the last axis are one numpy reduction with the op's accumulator (both
faster than PyTensor's C loop); the remaining reductions keep their C code. An embedding's
gradient (rows added to a table) is one sparse product. The measurements are in
docs/performance.md ("Fewer C modules", "Cold compile", "Round five", "Round six").

`contiguous`, for the loops' U^T once per loop (stepgraph.py), transposes a matrix with
OpenBLAS's blocked copy from numpy's own wheel, about 8x faster than numpy's strided one.

`run_from_python`, the last rewrite of compile_mode's C modes, wraps each such node's op in
`FromPython`, an op with the same inputs, outputs, views and in-place writes, whose thunk is
the numpy code below: PyTensor's own op classes are left as they are.
"""
import ctypes
import functools
import glob
import math
import os
import warnings

import numpy as np
import scipy.sparse

import flags  # noqa: F401  (first: the process's PyTensor flags, before pytensor)
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op
from pytensor.graph.rewriting.basic import node_rewriter
from pytensor.raise_op import Assert
from pytensor.scalar.basic import Add, Composite
from pytensor.scalar.math import Sigmoid
from pytensor.tensor.basic import Alloc, AllocEmpty, ARange, Join, MakeVector, ScalarFromTensor
from pytensor.tensor.elemwise import CAReduce, DimShuffle, Elemwise
from pytensor.tensor.shape import Reshape, Shape, Shape_i, SpecifyShape
from pytensor.tensor.subtensor import AdvancedIncSubtensor1, AdvancedSubtensor1, IncSubtensor, Subtensor

warnings.filterwarnings("ignore", category=RuntimeWarning, module=__name__)

# Ops that only move views and shapes (and checks), and concatenations (one numpy call):
# always from Python.
_VIEW_AND_SHAPE_OPS = (Shape, Shape_i, Reshape, SpecifyShape, MakeVector, ScalarFromTensor, Alloc, AllocEmpty,
                       ARange, DimShuffle, Subtensor, IncSubtensor, AdvancedSubtensor1, Assert, Join)


class FromPython(Op):
    """`op`, computed from Python: one numpy ufunc, one numpy sum, or the op's own perform."""

    __props__ = ("op",)

    def __init__(self, op):
        self.op = op
        self.destroy_map, self.view_map = op.destroy_map, op.view_map

    def __str__(self):
        return str(self.op)

    def make_node(self, *inputs):
        raise NotImplementedError("FromPython nodes are made by the run_from_python rewrite only")

    def perform(self, node, inputs, outputs):
        self.op.perform(node, inputs, outputs)

    def prepare_node(self, node, storage_map, compute_map, impl):
        self.op.prepare_node(node, storage_map, compute_map, "py")

    def make_thunk(self, node, storage_map, compute_map, no_recycling, impl=None):
        if isinstance(self.op, Elemwise) and _single_ufunc(self.op, node):
            return _ufunc_thunk(self.op, node, storage_map, compute_map)
        if isinstance(self.op, CAReduce):
            return _sum_thunk(self.op, node, storage_map, compute_map)
        if isinstance(self.op, AdvancedIncSubtensor1):
            return _rows_add_thunk(self.op, node, storage_map, compute_map)
        return super().make_thunk(node, storage_map, compute_map, no_recycling, impl="py")


@node_rewriter(None)
def run_from_python(fgraph, node):
    """Wrap the op of a node that runs as fast from Python (above) in FromPython."""
    op = node.op
    if not (isinstance(op, _VIEW_AND_SHAPE_OPS) or (isinstance(op, Elemwise) and _one_numpy_ufunc(node))
            or (isinstance(op, CAReduce) and (_sums_last_axis(node) or _blas_sum(node)))
            or _adds_rows(node)):
        return None
    wrapped = Apply(FromPython(op), list(node.inputs), [o.type() for o in node.outputs])
    return wrapped.outputs


def _sums_last_axis(node):
    op = node.op
    axes = range(node.inputs[0].type.ndim) if op.axis is None else op.axis
    return isinstance(op.scalar_op, Add) and node.inputs[0].type.ndim > 0 and node.inputs[0].type.ndim - 1 in axes


def _adds_rows(node):
    """x[idx] += y for a float32 table x (V, E) and rows y (N, E): an embedding's gradient."""
    if not isinstance(node.op, AdvancedIncSubtensor1) or node.op.set_instead_of_inc:
        return False
    x, y, _ = node.inputs
    return x.type.ndim == y.type.ndim == 2 and x.dtype == y.dtype == "float32" and not any(y.type.broadcastable)


def _blas_sum(node, op=None):
    """"leading" or "trailing" for a float32 sum over a leading or a trailing block of axes
    (not all of them): a BLAS product with ones; else None."""
    op, x = op or node.op, node.inputs[0]
    if not (isinstance(op.scalar_op, Add) and op.axis is not None and 0 < len(op.axis) < x.type.ndim
            and x.dtype == node.outputs[0].dtype == "float32"):
        return None
    axes, k, n = tuple(sorted(op.axis)), len(op.axis), x.type.ndim
    return "leading" if axes == tuple(range(k)) else "trailing" if axes == tuple(range(n - k, n)) else None


def _one_numpy_ufunc(node):
    spec = node.op.nfunc_spec
    return spec is not None and len(node.inputs) == spec[1] and not isinstance(node.op.scalar_op, Composite)


def _single_ufunc(op, node):
    if len(node.outputs) != 1:
        return False
    op.prepare_node(node, None, None, "py")
    return isinstance(op.nfunc, np.ufunc)


def _ufunc_thunk(op, node, storage_map, compute_map):
    """One numpy ufunc call with `out=`: in place when the graph asks for it, else into the
    buffer of the previous call when the input shapes are the same (as PyTensor's C ops
    reuse theirs). Small tensors are most of a small model's ops, so this stays lean."""
    ufunc, destroyed = op.nfunc, op.inplace_pattern.get(0)
    dtype = np.dtype(node.outputs[0].dtype)
    if isinstance(op.scalar_op, Sigmoid) and dtype == np.float32 and node.inputs[0].dtype == "float32":
        ufunc = sigmoid
    inputs, output = [storage_map[v] for v in node.inputs], storage_map[node.outputs[0]]
    done = compute_map[node.outputs[0]] if compute_map is not None else None
    last = [None, None]  # the input shapes of the previous call, and its output's shape

    def thunk():
        args = [i[0] for i in inputs]
        if destroyed is not None:
            target = args[destroyed]
        else:
            shapes = [a.shape for a in args]
            target = output[0]
            if shapes != last[0]:
                last[:] = shapes, np.broadcast_shapes(*shapes)
                target = None
            if target is None:  # (intermediates are freed between calls)
                target = np.empty(last[1], dtype)
        # As PyTensor's own Python implementation: numpy's result, cast to the output type.
        ufunc(*args, out=target, casting="unsafe")
        output[0] = target
        if done is not None:
            done[0] = True

    thunk.inputs, thunk.outputs, thunk.lazy = inputs, [output], False
    return thunk


def sigmoid(x, out, casting=None):
    """The logistic function in place as 0.5 * tanh(0.5 x) + 0.5, for the Python-run sigmoid:
    numpy's float32 tanh is vectorised, scipy's expit is not."""
    np.multiply(x, np.float32(0.5), out=out)
    np.tanh(out, out=out)
    np.multiply(out, np.float32(0.5), out=out)
    return np.add(out, np.float32(0.5), out=out)


def _sum_thunk(op, node, storage_map, compute_map):
    """numpy's sum of the input over the op's axes, accumulated in the op's dtype; a float32
    sum over leading or trailing axes (a bias's gradient, a dot with a vector) as one BLAS
    product with a vector of ones, accumulated in float32 (a (1920, 10,000) sum over the
    rows: 1.7 ms against 8 for PyTensor's C loop; over the last axis of (30, 64, 512): 0.2 ms
    against 0.7 for numpy's float64 one)."""
    (x,), (out,) = node.inputs, node.outputs
    axis = None if op.axis is None else tuple(op.axis)
    acc, dtype = op.acc_dtype or out.dtype, np.dtype(out.dtype)
    inputs, output = [storage_map[x]], storage_map[out]
    done = compute_map[out] if compute_map is not None else None
    side, ones = _blas_sum(node, op), np.ones(0, dtype)

    def thunk():
        if side is not None:
            nonlocal ones
            value = inputs[0][0]
            k = len(axis) if side == "leading" else value.ndim - len(axis)
            rows = value.reshape(math.prod(value.shape[:k]), math.prod(value.shape[k:]))
            rows, kept = (rows, value.shape[k:]) if side == "leading" else (rows.T, value.shape[:k])
            if len(ones) != len(rows):
                ones = np.ones(len(rows), dtype)
            output[0] = np.dot(ones, rows).reshape(kept)
        else:
            output[0] = np.asarray(np.add.reduce(inputs[0][0], axis=axis, dtype=acc), dtype=dtype)
        if done is not None:
            done[0] = True

    thunk.inputs, thunk.outputs, thunk.lazy = inputs, [output], False
    return thunk


def _rows_add_thunk(op, node, storage_map, compute_map):
    """x[idx] += y with repeated indices summed, as a sparse (distinct rows, N) matrix of ones
    times y: 0.8 ms against 6.9 for np.add.at on a (10,000, 256) table and 1,920 rows."""
    inputs, output = [storage_map[v] for v in node.inputs], storage_map[node.outputs[0]]
    done = compute_map[node.outputs[0]] if compute_map is not None else None

    def thunk():
        x, y, idx = (i[0] for i in inputs)
        x = x if op.inplace else x.copy()
        if y.shape != (len(idx), x.shape[1]):
            np.add.at(x, idx, y)  # (broadcast rows: numpy's own rules and errors)
        elif len(idx):
            rows, which = np.unique(np.where(idx < 0, idx + len(x), idx), return_inverse=True)
            if rows[0] < 0 or rows[-1] >= len(x):
                raise IndexError(f"index {rows[0] if rows[0] < 0 else rows[-1]} is out of bounds for {len(x)} rows")
            ones = scipy.sparse.csr_matrix((np.ones(len(idx), x.dtype), (which.ravel(), np.arange(len(idx)))),
                                           shape=(len(rows), len(idx)))
            x[rows] += ones @ y
        output[0] = x
        if done is not None:
            done[0] = True

    thunk.inputs, thunk.outputs, thunk.lazy = inputs, [output], False
    return thunk


def contiguous(a):
    """`a` as a C-contiguous array. A float32 matrix stored transposed (U.T, a view) goes
    through OpenBLAS's blocked out-of-place transpose, 0.4 against 3.3 ms for numpy's strided
    copy of a 512 x 2048 one; anything else, or without that OpenBLAS, through numpy."""
    if a.ndim == 2 and a.dtype == np.float32 and a.flags.f_contiguous and not a.flags.c_contiguous and _omatcopy():
        rows, cols = a.shape  # a.T: C-contiguous (cols, rows)
        out = np.empty(a.shape, np.float32)
        _omatcopy()(101, 112, cols, rows, 1.0, a.ctypes.data, rows, out.ctypes.data, cols)  # row-major, transposed
        return out
    return np.ascontiguousarray(a)


@functools.cache
def openblas(name):
    """The CBLAS function `name` (64-bit integers) of the OpenBLAS in numpy's wheel, already
    loaded by numpy, as a ctypes function without argument types; None where numpy has
    another BLAS."""
    for path in glob.glob(os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs", "*openblas64*")):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for symbol in (f"scipy_{name}64_", f"{name}64_"):
            fn = getattr(lib, symbol, None)
            if fn is not None:
                return fn
    return None


@functools.cache
def _omatcopy():
    """cblas_somatcopy, with its argument types; None where numpy has another BLAS."""
    fn = openblas("cblas_somatcopy")
    if fn is not None:
        fn.restype = None
        fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_float,
                       ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64]
    return fn
