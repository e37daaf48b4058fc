"""Compiled functions: each model's cache of them, and the wrapper that compiles a graph for
PyTensor's JAX backend once per input shapes (XLA needs every shape when it compiles)."""
import time

import numpy as np

import flags  # noqa: F401  (first: the process's PyTensor flags, before pytensor)
import pytensor
import pytensor.tensor as pt
from pytensor.link.jax.linker import JAXLinker

from configurator import ConfigError


def function(inputs, outputs, mode, updates=(), pad=False, batch_axes=None):
    """pytensor.function(inputs, outputs, updates=updates, mode=mode), except under JAX.

    JAX compiles a graph for one set of input shapes, and PyTensor's JAX backend needs every
    shape known when it compiles (a reshape's, a scan's length). Under JAX this returns a
    StaticShapeFunction, which compiles the graph once per distinct input shapes, with those
    shapes (and the values of integer scalars) fixed: each new value of an integer scalar
    input (the autoencoder's max_len) is one more XLA compilation, seconds on a small model.
    With `pad`, each input of two or more dimensions, time-major (T, B, ...), is first padded
    with zeros (PAD_ID, or a mask's 0) on its own to the bucket sizes of its own length and
    batch, so that a run meets a few shapes only: callers ask for it where padding changes no
    output (sums and means over the real tokens; decoding's rows and steps, cut back).
    `batch_axes` = (each input's batch axis, each output's), None where it has none: a batch
    of one then runs as two copies of its row and the outputs are cut back to one, since a
    static axis of length 1 is broadcastable and scan refuses an initial state whose pattern
    differs from its step's."""
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
        """Each (T, B, ...) input padded with zeros to (bucket(T), bucket(B), ...) on its own:
        a source's length does not decide its target's."""
        padded = []
        for a in args:
            if a.ndim >= 2:
                a = np.pad(a, [(0, bucket(n) - n) for n in a.shape[:2]] + [(0, 0)] * (a.ndim - 2))
            padded.append(a)
        return padded


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


