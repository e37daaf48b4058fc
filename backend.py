"""PyTensor set-up shared by every entry point: float32, a project-local compile cache, and
the compile mode.

Import this module before anything else imports pytensor: `compiledir` can only be chosen
before pytensor's first import. A user's own PYTENSOR_FLAGS still win over these defaults.
"""
import os

_ROOT = os.path.dirname(os.path.abspath(__file__))
# A project-local cache means a second run (and the test suite) starts warm.
_DEFAULT_FLAGS = f"floatX=float32,compiledir={os.path.join(_ROOT, '.pytensor_cache')}"
os.environ["PYTENSOR_FLAGS"] = ",".join(
    f for f in (_DEFAULT_FLAGS, os.environ.get("PYTENSOR_FLAGS", "")) if f
)

# OpenMP threads (kernels.py) sleep when idle instead of spinning: spinning, they took the
# cores from numpy's BLAS threads and made the matmuls of a decoding step 2x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import warnings  # noqa: E402

# pytensor warns at import that its C backend found no BLAS; dot products then run through
# numpy's own BLAS, which is what we measured and want (see README, Performance).
warnings.filterwarnings("ignore", message="PyTensor could not link to a BLAS")

import logging  # noqa: E402

import pytensor  # noqa: E402,F401

# A WARNING per compiled function ("Using NumPy C-API based implementation for BLAS
# functions"): the expected set-up here, said once in the README instead.
logging.getLogger("pytensor.tensor.blas").setLevel(logging.ERROR)
import pytensor.tensor as pt  # noqa: E402,F401
import contextvars  # noqa: E402
import functools  # noqa: E402

import pytensor.scalar.basic as scalar_ops  # noqa: E402
from pytensor.graph.rewriting.basic import in2out, node_rewriter  # noqa: E402
from pytensor.link.vm import VMLinker  # noqa: E402
from pytensor.tensor.elemwise import CAReduce, Elemwise  # noqa: E402
from pytensor.tensor.math import Dot  # noqa: E402

if pytensor.config.floatX != "float32":
    raise RuntimeError(
        f"floatX is {pytensor.config.floatX}; this project needs float32. "
        "Import backend before anything else imports pytensor."
    )

# The modes a config may name. "CVM" is PyTensor's C backend: measured fastest to compile
# and to run for this model on CPU (README, Performance). "NUMBA" is PyTensor 3's own default.
MODES = ("CVM", "NUMBA", "FAST_COMPILE")
DEFAULT_MODE = "CVM"


def cached(functions, key, build):
    """functions[key], compiled by `build()` the first time it is asked for: each model keeps
    its compiled functions in such a dict, so every graph is compiled once."""
    if key not in functions:
        functions[key] = build()
    return functions[key]


def compile_mode(name=DEFAULT_MODE):
    """Return the pytensor mode for `name`, or raise ValueError naming the choices.

    Without the Gemm rewrite: with no BLAS linked to its C code, PyTensor's Gemm goes through
    numpy's C API with extra copies, measured 2x slower than Dot22 (numpy.dot) followed by an
    elementwise op (README, Performance). Without elementwise fusion, and with n-ary adds and
    multiplies split into binary ones: every elementwise op is then one numpy ufunc, run from
    Python (below), so it needs no C module of its own (cold compile of the benchmark model's
    train and decode functions: 35 C modules to 13, see README, Performance) and runs numpy's
    vectorised loops. Pass the mode to scan too, whose step function otherwise gets scan's
    own default rewrites. All of this is the mode's: functions compiled with any other mode,
    in the same process, are built as PyTensor builds them."""
    if name not in MODES:
        raise ValueError(f"unknown compile mode {name!r}; choose one of {', '.join(MODES)}")
    base = pytensor.compile.mode.get_mode(name)
    if isinstance(base.linker, VMLinker):  # CVM and FAST_COMPILE; NUMBA has a linker of its own
        old = base.linker
        # Always collecting intermediates (PyTensor's default): the thunks below write into a
        # buffer of the previous call only when it is still held, and the loop ops of
        # recurrence.py keep what their step functions return, which may view intermediates.
        linker = ProjectLinker(allow_gc=True, use_cloop=old.use_cloop, lazy=old.lazy, c_thunks=old.c_thunks)
        base = pytensor.compile.mode.Mode(linker=linker, optimizer=base.provided_optimizer)
    # Also without the flattening of add/mul chains (which the split below undoes) and without
    # in-place elementwise rewrites: with a buffer reused per op (below) they saved no time,
    # and cost a third of a cached compile.
    mode = base.excluding("gemm_optimizer", "fusion", "add_mul_fusion", "inplace_elemwise")
    mode = mode.register((in2out(_outer_product_as_mul, name="outer_product_as_mul"), 1.6))
    return mode.register((in2out(_binary_add_mul, name="binary_add_mul"), 49.1))


@node_rewriter([Dot])
def _outer_product_as_mul(fgraph, node):
    """(m, 1) @ (1, n) -> (m, 1) * (1, n). Gradients of matrix-vector products make such
    dots (attention's scores against `v`); as a BLAS call with k = 1 (or PyTensor's Ger) it
    took 2.4-3 ms for (1920 x 512), as one numpy multiply 0.4 ms."""
    x, y = node.inputs
    if x.type.ndim == 2 and y.type.ndim == 2 and x.type.broadcastable[1] and y.type.broadcastable[0]:
        out = x * y
        return [out] if out.type == node.outputs[0].type else None
    return None


@node_rewriter([Elemwise])
def _binary_add_mul(fgraph, node):
    """add(a, b, c, ...) -> add(add(a, b), c) ..., and the same for mul."""
    scalar = node.op.scalar_op
    if len(node.inputs) <= 2 or not isinstance(scalar, (scalar_ops.Add, scalar_ops.Mul)) or node.op.inplace_pattern:
        return None
    out = functools.reduce(pt.add if isinstance(scalar, scalar_ops.Add) else pt.mul, node.inputs)
    return [out] if out.type == node.outputs[0].type else None


# ---- fewer C modules to compile -----------------------------------------------------------
#
# ProjectLinker, the linker of compile_mode's modes, decides per op whether it runs from
# Python. The op classes' make_thunk below are wrapped once, at import, but the wrappers only
# act while a ProjectLinker makes thunks: everywhere else they call PyTensor's own.
#
# On a cold cache every distinct C op costs one gcc run of about 0.7-1 s, whatever the -O
# level (measured: -O0 saved 10%). Ops that only move views and shapes, and elementwise ops
# that map to one numpy ufunc (all of them, with the mode above), run as fast from Python
# (numpy's float32 tanh is faster than the generated C), so they skip compilation. A
# ufunc writes into its previous output buffer, or in place into the input the graph lets
# it destroy: a fresh 77 MB (T, B, V) array per call cost more than the addition itself.
# Overflow in exp and the like gives inf or NaN silently, as the C code does: the non-finite
# guards in training check for them.
# Sums over the last (contiguous) axis run as one numpy reduction with the same float64
# accumulator: PyTensor's C loop took 6.6 ms for a (30, 64, 1024) sum over axis 2 against
# numpy's 1.0 ms, and 70 ms against 12 for (1920, 10000) over axis 1. Other reductions keep
# their C code, which is faster over leading axes (0.3 against 0.7 ms).


_IN_PROJECT_LINKER = contextvars.ContextVar("in_project_linker", default=False)


class ProjectLinker(VMLinker):
    """PyTensor's VM linker, choosing Python thunks for cheap ops (above) while it works."""

    def make_all(self, *args, **kwargs):
        token = _IN_PROJECT_LINKER.set(True)
        try:
            return super().make_all(*args, **kwargs)
        finally:
            _IN_PROJECT_LINKER.reset(token)


def _python_when(cls, use_python):
    """Make `cls` ops run from Python when `use_python(node)` holds, in a ProjectLinker."""
    original = cls.make_thunk

    def make_thunk(self, node, storage_map, compute_map, no_recycling, impl=None):
        if impl is None and _IN_PROJECT_LINKER.get() and use_python(node):
            if _single_ufunc(node):
                return _ufunc_thunk(node, storage_map, compute_map)
            if isinstance(node.op, CAReduce):
                return _sum_thunk(node, storage_map, compute_map)
            impl = "py"
        return original(self, node, storage_map, compute_map, no_recycling, impl=impl)

    cls.make_thunk = make_thunk


def _sums_last_axis(node):
    op = node.op
    axes = range(node.inputs[0].type.ndim) if op.axis is None else op.axis
    return (isinstance(op.scalar_op, scalar_ops.Add) and node.inputs[0].type.ndim > 0
            and node.inputs[0].type.ndim - 1 in axes)


def _one_numpy_ufunc(node):
    spec = node.op.nfunc_spec
    return spec is not None and len(node.inputs) == spec[1] and not isinstance(node.op.scalar_op, Composite)


def _single_ufunc(node):
    op = node.op
    if not isinstance(op, Elemwise) or len(node.outputs) != 1:
        return False
    op.prepare_node(node, None, None, "py")
    return isinstance(op.nfunc, np.ufunc)


def _ufunc_thunk(node, storage_map, compute_map):
    """One numpy ufunc call with `out=`: in place when the graph asks for it, else into the
    buffer of the previous call when the input shapes are the same (as PyTensor's C ops
    reuse theirs). Small tensors are most of a small model's ops, so this stays lean."""
    ufunc, destroyed = node.op.nfunc, node.op.inplace_pattern.get(0)
    dtype = np.dtype(node.outputs[0].dtype)
    if isinstance(node.op.scalar_op, Sigmoid) and dtype == np.float32 and node.inputs[0].dtype == "float32":
        ufunc = _sigmoid
    inputs, output = [storage_map[v] for v in node.inputs], storage_map[node.outputs[0]]
    done = compute_map[node.outputs[0]] if compute_map is not None else None
    last_shapes = [None]

    def thunk():
        args = [i[0] for i in inputs]
        if destroyed is not None:
            target = args[destroyed]
        else:
            shapes = [a.shape for a in args]
            target = output[0]
            if target is None or shapes != last_shapes[0]:
                target = np.empty(np.broadcast_shapes(*shapes), dtype)
                last_shapes[0] = shapes
        # As PyTensor's own Python implementation: numpy's result, cast to the output type.
        ufunc(*args, out=target, casting="unsafe")
        output[0] = target
        if done is not None:
            done[0] = True

    thunk.inputs, thunk.outputs, thunk.lazy = inputs, [output], False
    return thunk


def _sigmoid(x, out, casting=None):
    """The logistic function as 0.5 * tanh(0.5 x) + 0.5 (kernels.py's GRU does the same):
    numpy's float32 tanh is vectorised, scipy's expit is not (0.06 against 0.39 ms for a
    (64, 1536) gate block, every step of an LSTM)."""
    np.multiply(x, np.float32(0.5), out=out)
    np.tanh(out, out=out)
    np.multiply(out, np.float32(0.5), out=out)
    return np.add(out, np.float32(0.5), out=out)


def _sum_thunk(node, storage_map, compute_map):
    """numpy's sum of the input over the op's axes, accumulated in the op's dtype."""
    op, (x,), (out,) = node.op, node.inputs, node.outputs
    axis = None if op.axis is None else tuple(op.axis)
    acc, dtype = op.acc_dtype or out.dtype, np.dtype(out.dtype)
    inputs, output = [storage_map[x]], storage_map[out]
    done = compute_map[out] if compute_map is not None else None

    def thunk():
        output[0] = np.asarray(np.add.reduce(inputs[0][0], axis=axis, dtype=acc), dtype=dtype)
        if done is not None:
            done[0] = True

    thunk.inputs, thunk.outputs, thunk.lazy = inputs, [output], False
    return thunk


import numpy as np  # noqa: E402
from pytensor.raise_op import Assert  # noqa: E402

warnings.filterwarnings("ignore", category=RuntimeWarning, module=__name__)
from pytensor.scalar.basic import Composite  # noqa: E402
from pytensor.scalar.math import Sigmoid  # noqa: E402
from pytensor.tensor.basic import Alloc, AllocEmpty, ARange, MakeVector, ScalarFromTensor  # noqa: E402
from pytensor.tensor.shape import Reshape, Shape, Shape_i, SpecifyShape  # noqa: E402
from pytensor.tensor.subtensor import AdvancedSubtensor1, IncSubtensor, Subtensor  # noqa: E402
from pytensor.tensor.elemwise import DimShuffle  # noqa: E402

_PYTHON_OPS = (Shape, Shape_i, Reshape, SpecifyShape, MakeVector, ScalarFromTensor, Alloc, AllocEmpty, ARange,
               DimShuffle, Subtensor, IncSubtensor, AdvancedSubtensor1, Assert)
for _cls in _PYTHON_OPS:
    _python_when(_cls, lambda node: True)
_python_when(Elemwise, _one_numpy_ufunc)
_python_when(CAReduce, _sums_last_axis)
