"""PyTensor set-up shared by every entry point: float32, a project-local compile cache, and
the compile mode.

Import this module before anything else imports pytensor: `compiledir` can only be chosen
before pytensor's first import. A user's own PYTENSOR_FLAGS still win over these defaults.
"""
import functools
import logging
import os
import time
import warnings

import numpy as np

_ROOT = os.path.dirname(os.path.abspath(__file__))
# A project-local cache means a second run (and the test suite) starts warm. pytensor.function's
# default mode is PyTensor's C backend, as every script's: PyTensor 3's own default, Numba,
# cold-compiles a model in about 90 s, and the project's loop ops run in C backend modes.
_DEFAULT_FLAGS = f"floatX=float32,mode=CVM,compiledir={os.path.join(_ROOT, '.pytensor_cache')}"
os.environ["PYTENSOR_FLAGS"] = ",".join(
    f for f in (_DEFAULT_FLAGS, os.environ.get("PYTENSOR_FLAGS", "")) if f
)
# OpenMP threads (kernels.py) sleep when idle instead of spinning: spinning, they took the
# cores from numpy's BLAS threads and made the matmuls of a decoding step 2x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# pytensor warns at import that its C backend found no BLAS; dot products then run through
# numpy's own BLAS, which is what we measured and want (see README, Performance).
warnings.filterwarnings("ignore", message="PyTensor could not link to a BLAS")

# After the flags above: pytensor reads them at its first import.
import pytensor  # noqa: E402
import pytensor.scalar.basic as scalar_ops  # noqa: E402
import pytensor.tensor as pt  # noqa: E402
from pytensor.graph.basic import Constant  # noqa: E402
from pytensor.graph.rewriting.basic import in2out, node_rewriter  # noqa: E402
from pytensor.link.jax.linker import JAXLinker  # noqa: E402
from pytensor.link.vm import VMLinker  # noqa: E402
from pytensor.tensor.basic import MakeVector  # noqa: E402
from pytensor.tensor.elemwise import Elemwise  # noqa: E402
from pytensor.tensor.math import Dot  # noqa: E402
from pytensor.tensor.shape import Reshape  # noqa: E402

import thunks  # noqa: E402
from configurator import ConfigError  # noqa: E402

# A WARNING per compiled function ("Using NumPy C-API based implementation for BLAS
# functions"): the expected set-up here, said once in the README instead.
logging.getLogger("pytensor.tensor.blas").setLevel(logging.ERROR)

if pytensor.config.floatX != "float32":
    raise RuntimeError(
        f"floatX is {pytensor.config.floatX}; this project needs float32. "
        "Import backend before anything else imports pytensor."
    )

# The modes a config may name. "CVM" is PyTensor's C backend: measured fastest to compile
# and to run for this model on CPU (README, Performance). "NUMBA" is PyTensor 3's own default.
MODES = ("CVM", "NUMBA", "FAST_COMPILE", "JAX")
DEFAULT_MODE = "CVM"


def host_loops(name):
    """Whether the project's own loop ops (recurrence.StepLoop, kernels.GRUSequence), numpy
    loops driven from Python, run in compile mode `name`. Numba and JAX compile
    pytensor.scan themselves (JAX to one lax.scan), so there every cell runs under scan."""
    return name in ("CVM", "FAST_COMPILE")


def default_mode_name():
    """The name in MODES of what `pytensor.function` compiles with when given no mode
    (PYTENSOR_FLAGS' `mode`; NUMBA unless set): a module built with no mode builds its loops
    for it."""
    linker = pytensor.compile.mode.get_default_mode().linker
    if isinstance(linker, JAXLinker):
        return "JAX"
    return "CVM" if isinstance(linker, VMLinker) else "NUMBA"


def function(inputs, outputs, mode, updates=(), pad=False, batch_axes=None):
    """pytensor.function(inputs, outputs, updates=updates, mode=mode), except under JAX.

    JAX compiles a graph for one set of input shapes, and PyTensor's JAX backend needs every
    shape known when it compiles (a reshape's, a scan's length). Under JAX this returns a
    StaticShapeFunction, which compiles the graph once per distinct input shapes, with those
    shapes (and the values of integer scalars, such as a decoding length) fixed. With `pad`,
    every input of two or more dimensions, time-major (T, B, ...), is first padded with
    zeros (PAD_ID, or a mask's 0) to the bucket sizes of `bucket`, so that a run meets a few
    shapes only: callers ask for it where padding changes no output (sums and means over
    the real tokens). `batch_axes` = (each input's batch axis, each output's), None where
    it has none: a batch of one then runs as two copies of its row and the outputs are cut
    back to one, since a static axis of length 1 is broadcastable and scan refuses an initial
    state whose pattern differs from its step's."""
    if isinstance(mode.linker, JAXLinker):
        return StaticShapeFunction(inputs, outputs, mode, list(updates), pad, batch_axes)
    return pytensor.function(inputs, outputs, updates=updates, mode=mode)


# Under JAX, sequence lengths and batch sizes are padded to the next of these: at most a
# third of a batch is padding, and a run over a corpus compiles for a handful of shapes.
BUCKETS = (8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)


def bucket(n):
    """The smallest bucket size >= n (n itself beyond the largest)."""
    return next((b for b in BUCKETS if b >= n), n)


class StaticShapeFunction:
    """A graph compiled by PyTensor's JAX backend once for each input shapes it is called
    with; `compiles` lists (shapes, seconds) of each compilation, PyTensor's and XLA's."""

    def __init__(self, inputs, outputs, mode, updates, pad, batch_axes=None):
        self.inputs, self.outputs, self.mode, self.updates, self.pad = inputs, outputs, mode, updates, pad
        self.batch_axes = batch_axes
        self.functions, self.compiles = {}, []

    def __call__(self, *args):
        args = [np.asarray(a) for a in args]
        args = self._padded(args) if self.pad else args
        if self.batch_axes is not None:
            in_axes, out_axes = self.batch_axes
            if any(k is not None and a.shape[k] == 1 for a, k in zip(args, in_axes)):  # one row: run two
                out = self._call([a if k is None else np.repeat(a, 2, axis=k) for a, k in zip(args, in_axes)])
                single = not isinstance(out, list)
                out = [o if k is None else np.take(o, [0], axis=k) for o, k in zip([out] if single else out, out_axes)]
                return out[0] if single else out
        return self._call(args)

    def _call(self, args):
        # An integer scalar (a decoding length) is a scan's number of steps: compiled in.
        key = tuple(a.shape if a.ndim or a.dtype.kind == "f" else ("value", int(a)) for a in args)
        constant = [k[:1] == ("value",) for k in key]
        variable = [a for a, c in zip(args, constant) if not c]
        if key in self.functions:
            return _numpy(self.functions[key](*variable))
        start = time.perf_counter()
        static = [pt.constant(a, name=v.name) if c else pt.tensor(v.name, dtype=v.dtype, shape=k)
                  for v, a, k, c in zip(self.inputs, args, key, constant)]
        try:
            f = pytensor.function([s for s, c in zip(static, constant) if not c], self.outputs, updates=self.updates,
                                  mode=self.mode, givens=list(zip(self.inputs, static)), on_unused_input="ignore")
            out = f(*variable)  # XLA compiles at the first call
        except NotImplementedError as err:
            if "No JAX conversion" not in str(err):
                raise
            raise ConfigError(_no_jax_version(err, self.outputs)) from None
        self.functions[key] = f
        self.compiles.append((key, time.perf_counter() - start))
        return _numpy(out)

    def _padded(self, args):
        seqs = [i for i, a in enumerate(args) if a.ndim >= 2]
        if not seqs:
            return args
        T, B = (bucket(max(args[i].shape[k] for i in seqs)) for k in (0, 1))
        args = list(args)
        for i in seqs:
            a = args[i]
            args[i] = np.pad(a, [(0, T - a.shape[0]), (0, B - a.shape[1])] + [(0, 0)] * (a.ndim - 2))
        return args


def compile_summary(functions):
    """'N compilations (S s): ...' of the StaticShapeFunctions among a model's compiled
    `functions` (values may be tuples of functions), or None when there are none (not JAX)."""
    found = [(key, f) for key, value in functions.items()
             for f in (value if isinstance(value, tuple) else (value,)) if isinstance(f, StaticShapeFunction)]
    if not found:
        return None
    parts = [f"{key[0] if isinstance(key, tuple) else key} {len(f.compiles)}" for key, f in found if f.compiles]
    seconds = sum(s for _, f in found for _, s in f.compiles)
    return f"{sum(len(f.compiles) for _, f in found)} JAX compilations ({seconds:.0f} s): {', '.join(parts)}"


def _no_jax_version(err, outputs):
    """One line naming the op that has no JAX version and the loops (cells) that use it."""
    op = str(err).split("`Op`:", 1)[-1].strip()
    loops = sorted({node.op.name for node in pytensor.graph.traversal.apply_ancestors(outputs)
                    if hasattr(node.op, "fgraph") and op in {str(n.op) for n in node.op.fgraph.apply_nodes}
                    and getattr(node.op, "name", None)})
    where = f" in {', '.join(loops)}" if loops else ""
    return (f"--mode=JAX: the op {op}{where} has no JAX version (register one with "
            f"pytensor.link.jax.dispatch.jax_funcify, as jax_kernels.py does), or use --mode=CVM")


def _numpy(out):
    """JAX's output arrays as numpy arrays, which callers may write into."""
    return [np.asarray(o) for o in out] if isinstance(out, (list, tuple)) else np.asarray(out)


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
    if name == "JAX":
        _import_jax()
    base = pytensor.compile.mode.get_mode(name)
    python_thunks = isinstance(base.linker, VMLinker)  # CVM and FAST_COMPILE; not NUMBA's or JAX's
    if python_thunks:
        old = base.linker
        # Always collecting intermediates (PyTensor's default): thunks.py's write into a
        # buffer of the previous call only when it is still held, and the loop ops of
        # recurrence.py keep what their step functions return, which may view intermediates.
        linker = VMLinker(allow_gc=True, use_cloop=old.use_cloop, lazy=old.lazy, c_thunks=old.c_thunks)
        base = pytensor.compile.mode.Mode(linker=linker, optimizer=base.provided_optimizer)
    # Also without the flattening of add/mul chains (which the split below undoes) and without
    # in-place elementwise rewrites: with a buffer reused per op (below) they saved no time,
    # and cost a third of a cached compile.
    mode = base.excluding("gemm_optimizer", "fusion", "add_mul_fusion", "inplace_elemwise")
    mode = mode.register((in2out(_outer_product_as_mul, name="outer_product_as_mul"), 1.6))
    mode = mode.register((in2out(_binary_add_mul, name="binary_add_mul"), 49.1))
    if name == "JAX":
        mode = mode.register((in2out(_reshape_unknown_as_minus_one, name="reshape_unknown_as_minus_one"), 49.2))
    if python_thunks:  # the last rewrite: cheap ops run from Python (thunks.py)
        mode = mode.register((in2out(thunks.run_from_python, name="run_from_python"), 99))
    return mode


def _import_jax():
    """The JAX versions of the project's ops (jax_kernels.py), or one line on how to install JAX."""
    try:
        import jax_kernels  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"mode=JAX needs JAX ({e}): pip install -r requirements-jax.txt, or use mode=CVM") from None


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


@node_rewriter([Reshape])
def _reshape_unknown_as_minus_one(fgraph, node):
    """reshape(x, (a, b, k)) with one entry k not a constant -> reshape(x, (a, b, -1)).

    JAX needs the shape of a reshape as concrete numbers when it compiles. Scan does not
    infer the shapes of its per-step outputs, so flattening one (the gradient's (T, B, H)
    to (T*B, H)) has an entry computed from the scan output's shape; with the others known,
    -1 stands for it exactly."""
    shape = node.inputs[1].owner
    if shape is None or not isinstance(shape.op, MakeVector):
        return None
    unknown = [i for i, v in enumerate(shape.inputs) if not isinstance(v, Constant)]
    if len(unknown) != 1:
        return None
    dims = [-1 if i == unknown[0] else int(v.data) for i, v in enumerate(shape.inputs)]
    out = node.op(node.inputs[0], np.array(dims, dtype="int64"))
    return [out] if out.type == node.outputs[0].type else None


@node_rewriter([Elemwise])
def _binary_add_mul(fgraph, node):
    """add(a, b, c, ...) -> add(add(a, b), c) ..., and the same for mul."""
    scalar = node.op.scalar_op
    if len(node.inputs) <= 2 or not isinstance(scalar, (scalar_ops.Add, scalar_ops.Mul)) or node.op.inplace_pattern:
        return None
    out = functools.reduce(pt.add if isinstance(scalar, scalar_ops.Add) else pt.mul, node.inputs)
    return [out] if out.type == node.outputs[0].type else None
