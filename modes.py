"""The compile modes a config may name, and the rewrites that make them the project's: dot
products through numpy's BLAS, groups of elementwise ops as one generated C loop
(elemwise_kernel.py), single ones as one numpy ufunc, cheap ops run from Python (thunks.py). `compile_mode(name)` is the one door to them; `fast_loops(name)` says whether the
project's own loop ops (recurrence.py, gru_kernel.py) run under a mode."""
import functools

import numpy as np

import flags  # noqa: F401  (first: the process's PyTensor flags, before pytensor)
import pytensor
import pytensor.scalar.basic as scalar_ops
import pytensor.tensor as pt
from pytensor.graph.basic import Constant
from pytensor.graph.features import ReplaceValidate
from pytensor.graph.rewriting.basic import GraphRewriter, in2out, node_rewriter
from pytensor.link.jax.linker import JAXLinker
from pytensor.link.vm import VMLinker
from pytensor.tensor.basic import MakeVector
from pytensor.tensor.elemwise import DimShuffle, Elemwise
from pytensor.tensor.math import Dot
from pytensor.tensor.shape import Reshape
from pytensor.tensor.subtensor import IncSubtensor, Subtensor, get_idx_list

import elemwise_kernel
import thunks
from configurator import ConfigError

# The modes a config may name. "CVM" is PyTensor's C backend: measured fastest to compile
# and to run for this model on CPU (README, Performance). "NUMBA" is PyTensor 3's own default.
MODES = ("CVM", "NUMBA", "FAST_COMPILE", "JAX")
DEFAULT_MODE = "CVM"


def fast_loops(name):
    """Whether the project's own loop ops (recurrence.StepLoop, a numpy loop driven from
    Python; gru_kernel.GRUSequence, a C loop) run in compile mode `name`. Numba and JAX compile
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


def compile_mode(name=DEFAULT_MODE):
    """Return the pytensor mode for `name`, or raise ValueError naming the choices.

    Without the Gemm rewrite: with no BLAS linked to its C code, PyTensor's Gemm goes through
    numpy's C API with extra copies, slower than Dot22 (numpy.dot) and an elementwise op.
    Without PyTensor's elementwise fusion (its C loops call scalar libm functions) and with
    n-ary adds and multiplies split into binary ones: connected groups of float32 elementwise
    ops become one generated loop each (elemwise_kernel.py, _fusion_groups), and every other
    elementwise op is one numpy ufunc run from Python (thunks.py). Pass the mode to scan too, whose
    step function otherwise gets scan's own default rewrites. All of this is the mode's:
    functions compiled with any other mode, in the same process, are built as PyTensor builds
    them. docs/performance.md has the measurements behind each choice."""
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
    # Without Dot22Scalar: `lr * (a.T @ dy)` in an update became its own matmul, computed
    # again beside the `a.T @ dy` that the gradient's norm reads (the output layer's weight
    # gradient twice per training step, 7% of it at the default size). Without lifting a
    # reshape above elementwise ops: dot(tanh(k), v) over a (Ts, B, A) array reshapes k's
    # tanh for the product, and lifted, the reshape made a second tanh beside the one the
    # gradient reads (attention's scores: two tanh passes over (Ts, B, A) per step).
    mode = base.excluding("gemm_optimizer", "fusion", "add_mul_fusion", "inplace_elemwise",
                          "local_dot22_to_dot22scalar", "local_reshape_lift")
    mode = mode.register((in2out(_outer_product_as_mul, name="outer_product_as_mul"), 1.6))
    mode = mode.register((in2out(_binary_add_mul, name="binary_add_mul"), 49.1))
    mode = mode.register((in2out(_column_blocks_as_join, name="column_blocks_as_join"), 49.15))
    if name == "JAX":
        mode = mode.register((in2out(_reshape_unknown_as_minus_one, name="reshape_unknown_as_minus_one"), 49.2))
    if python_thunks:  # groups of elementwise ops as one generated C loop (elemwise_kernel.py)
        mode = mode.register((in2out(_unflattened_outer_product, name="unflattened_outer_product"), 49.3))
        mode = mode.register((in2out(_lift_slices, name="lift_slices"), 49.4))
        mode = mode.register((_FuseElementwise(), 49.5))
    if python_thunks:  # the last rewrite: cheap ops run from Python (thunks.py)
        mode = mode.register((in2out(thunks.run_from_python, name="run_from_python"), 99))
    return mode


def _import_jax():
    """Give the project's ops their JAX versions (jax_kernels.py), or raise one line on how to
    install JAX."""
    try:
        import jax_kernels
    except ImportError as e:
        raise ConfigError(f"mode=JAX needs JAX ({e}): pip install -r requirements-jax.txt, or use mode=CVM") from None
    jax_kernels.register()


@node_rewriter([Dot])
def _outer_product_as_mul(fgraph, node):
    """(m, 1) @ (1, n) -> (m, 1) * (1, n). Gradients of matrix-vector products make such
    dots (attention's scores against `v`); one numpy multiply is several times faster than a
    BLAS call with k = 1 (or PyTensor's Ger)."""
    x, y = node.inputs
    if x.type.ndim == 2 and y.type.ndim == 2 and x.type.broadcastable[1] and y.type.broadcastable[0]:
        out = x * y
        return [out] if out.type == node.outputs[0].type else None
    return None


@node_rewriter([Reshape])
def _unflattened_outer_product(fgraph, node):
    """reshape(ravel(s)[:, None] * r, (d_1, ..., d_k, n)) for s of k axes and a row r (1, n)
    -> specify_shape(s, (d_1, ..., d_k))[..., None] * r[0]. The gradient of dot(x, v) for x of
    three axes (attention's scores against v) is such a reshape: as one elementwise product
    it joins the generated loop that reads it (the tanh's gradient), instead of a (Ts * B, A)
    array written at every step. The shape check keeps the reshape's order exact."""
    product = node.inputs[0].owner
    if product is None or not isinstance(product.op, Elemwise) or not isinstance(product.op.scalar_op, scalar_ops.Mul) \
            or len(product.inputs) != 2:
        return None
    col, row = sorted(product.inputs, key=lambda v: v.type.broadcastable == (True, False))
    if row.type.broadcastable != (True, False) or col.type.broadcastable != (False, True) or col.owner is None:
        return None
    if isinstance(col.owner.op, DimShuffle) and tuple(col.owner.op.new_order) == (0, "x"):
        col = col.owner.inputs[0]  # ravel(s)[:, None], else reshape(s, (-1, 1))
    if col.owner is None or not isinstance(col.owner.op, Reshape):
        return None
    s, k = col.owner.inputs[0], node.outputs[0].type.ndim - 1
    if s.type.ndim != k or k < 2:
        return None
    s = pt.specify_shape(s, tuple(node.inputs[1][i] for i in range(k)))
    out = pt.shape_padright(s) * row[0]
    return [out] if node.outputs[0].type.is_super(out.type) else None


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


def _column_slice(node, n_columns):
    """(start, stop) of an increment of x[:, start:stop] with constant bounds, else None."""
    idx = get_idx_list([node.inputs[0], *node.inputs[2:]], node.op.idx_list)  # (x, y, *indices)
    if len(idx) != 2 or idx[0] != slice(None) or not isinstance(idx[1], slice) or idx[1].step is not None:
        return None
    bounds = [default if v is None else int(v.data) if isinstance(v, Constant) else None
              for v, default in ((idx[1].start, 0), (idx[1].stop, n_columns))]
    return tuple(bounds) if None not in bounds and 0 <= bounds[0] < bounds[1] <= n_columns else None


@node_rewriter([IncSubtensor])
def _column_blocks_as_join(fgraph, node):
    """inc(... inc(zeros(m, n)[:, a:b], y1) ..., yk) whose column blocks tile the n columns
    -> concatenate(y's in column order, axis=1). The gradient of a step that slices its
    gates (B, 4H) into blocks is such a chain: one concatenation instead of an allocation
    and a copy of the whole array per block."""
    blocks, x = [], node.outputs[0]
    while x.owner is not None and isinstance(x.owner.op, IncSubtensor):
        blocks.append(x.owner)
        x = x.owner.inputs[0]
    if x.owner is None or not isinstance(x.owner.op, pt.basic.Alloc) or x.type.ndim != 2:
        return None
    value, *shape = x.owner.inputs
    if not (isinstance(value, Constant) and np.all(value.data == 0) and isinstance(shape[1], Constant)):
        return None
    n = int(shape[1].data)
    pieces = []
    for block in blocks:
        y, cols = block.inputs[1], _column_slice(block, n)
        if cols is None or y.type.ndim != 2 or any(y.type.broadcastable) or y.type.dtype != x.type.dtype:
            return None
        pieces.append((cols, y))
    pieces.sort(key=lambda p: p[0])
    starts, stops = [a for (a, _), _ in pieces], [b for (_, b), _ in pieces]
    if starts != [0, *stops[:-1]] or stops[-1] != n:  # each block starts where the last stopped
        return None
    out = pt.specify_shape(pt.concatenate([y for _, y in pieces], axis=1), (None, n))
    return [out] if out.type == node.outputs[0].type else None


def _fusion_groups(fgraph):
    """Groups (lists of nodes in graph order, two or more) to fuse: connected, of one output
    broadcast pattern, and convex (no path between two members through a non-member)."""
    order = fgraph.toposort()
    index = {node: i for i, node in enumerate(order)}
    ancestors = {}  # node -> bitset of the nodes it depends on
    for node in order:
        bits = 0
        for v in node.inputs:
            if v.owner is not None:
                bits |= ancestors[v.owner] | (1 << index[v.owner])
        ancestors[node] = bits
    taken, groups = set(), []
    for sink in reversed(order):
        if sink in taken or not elemwise_kernel.supports(sink):
            continue
        pattern = sink.outputs[0].type.broadcastable
        members, bits, frontier = [sink], 1 << index[sink], [sink]
        while frontier:
            node = frontier.pop()
            neighbours = [v.owner for v in node.inputs if v.owner is not None]
            neighbours += [c for c, _ in fgraph.clients[node.outputs[0]]]
            for other in neighbours:
                if (other in members or other in taken or not elemwise_kernel.supports(other)
                        or other.outputs[0].type.broadcastable != pattern):
                    continue
                grown = bits | (1 << index[other])
                # convex: no input from outside the group depends on a member
                if all(not (ancestors[v.owner] & grown) for m in members + [other] for v in m.inputs
                       if v.owner is not None and not (grown >> index[v.owner]) & 1):
                    members.append(other)
                    bits = grown
                    frontier.append(other)
        if len(members) > 1:
            taken.update(members)
            groups.append(sorted(members, key=index.get))
    return groups


@node_rewriter([Subtensor])
def _lift_slices(fgraph, node):
    """elemwise(a, b)[slices] -> elemwise(a[slices], b[slices]) when every client of the
    elementwise output is such a slice: the gates of a stacked matmul, z = x + h @ U cut into
    blocks, are then computed block by block, each fused with what reads it, not as one
    unfused pass over all blocks first. Slices of broadcast axes are not taken."""
    x = node.inputs[0]
    if x.owner is None or not elemwise_kernel.supports(x.owner) or x in fgraph.outputs:
        return None
    slices = lambda c: isinstance(c.op, Subtensor) and all(  # noqa: E731
        isinstance(i, slice) for i in get_idx_list(c.inputs, c.op.idx_list))
    if not all(slices(c) for c, _ in fgraph.clients[x]):
        return None
    idx = get_idx_list(node.inputs, node.op.idx_list)
    idx = list(idx) + [slice(None)] * (x.type.ndim - len(idx))
    pieces = [v if all(v.type.broadcastable) else v[tuple(slice(None) if b else i for b, i in zip(v.type.broadcastable, idx))]
              for v in x.owner.inputs]
    out = x.owner.op(*pieces)
    return [out] if out.type == node.outputs[0].type else None


class _FuseElementwise(GraphRewriter):
    """Each group of _fusion_groups as one generated C loop (elemwise_kernel.FusedElemwise)."""

    def add_requirements(self, fgraph):
        fgraph.attach_feature(ReplaceValidate())

    def apply(self, fgraph):
        if not elemwise_kernel.COMPILER:
            return  # no C compiler: the ops run one by one
        bodies = []
        for members in _fusion_groups(fgraph):
            node, replaced = elemwise_kernel.fused_node(fgraph, members)
            if node is not None:  # (None: more inputs, outputs or axes than the kernels take)
                fgraph.replace_all_validate(list(zip(replaced, node.outputs)), reason="fuse_elementwise")
                bodies.append(node.op.body)
        elemwise_kernel.build_kernels(bodies)
