"""One step's graph, split the way a hand-written kernel would be, and the functions a loop
calls once per timestep (recurrence.py's StepLoop is that loop).

    step(x_t, *state, *memory) -> [*new_state, *extra]

becomes two compiled functions:

    forward(x_t, *state)                            -> *new_state, *extra, *saved
    backward(x_t, *state, *saved, *d_new, *d_extra) -> *d_state, d x_t, *d dots, *d memory

`saved` are the forward values the backward graph reads, so nothing is computed twice. Every
matmul of the step with a weight, `y = a @ w(W)` (the cell's `h @ U`), is cut out of the
per-step gradient: the backward step only returns d y_t, and a third function computes the
weight gradient after the loop from one large matmul over all timesteps, sum_t a_t^T dy_t =
A^T dY. What reads only the weights and the memory is computed once per loop
(`_LoopFunction`). A step that reads anything but its input, its state, its memory, float32
shared variables and constants raises UnsupportedStep.
"""
import numpy as np

from flags import FLOATX
import pytensor
import pytensor.tensor as pt
from pytensor.compile.sharedvalue import SharedVariable
from pytensor.graph.basic import Constant, clone_get_equiv
from pytensor.graph.fg import FunctionGraph
from pytensor.graph.replace import clone_replace
from pytensor.graph.rewriting.basic import MergeOptimizer
from pytensor.graph.traversal import ancestors, graph_inputs
from pytensor.scalar.basic import Second
from pytensor.tensor.blas import BatchedDot
from pytensor.tensor.blockwise import Blockwise
from pytensor.tensor.elemwise import Elemwise
from pytensor.tensor.math import Dot
from pytensor.tensor.shape import Shape, Shape_i
import thunks




class UnsupportedStep(TypeError):
    """A step that reads something other than its input, state, memory, shared variables and
    constants, or returns what the loop cannot carry; it runs under scan."""


def as_list(out):
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _reads_only(var, allowed):
    """Whether `var` is computed from constants and the variables in `allowed` alone."""
    return all(i in allowed or isinstance(i, Constant) for i in graph_inputs([var]))


def _is_matmul(node):
    """A 2-D dot, or a batched one (`pt.matmul` of two (..., m, k) and (..., k, n) tensors
    with the same batch dimensions)."""
    op, (a, b) = node.op, node.inputs if len(node.inputs) == 2 else (None, None)
    if isinstance(op, Dot):
        return a.type.ndim == 2 and b.type.ndim == 2
    return (isinstance(op, Blockwise) and isinstance(op.core_op, Dot) and a.type.ndim == b.type.ndim
            and not any(a.type.broadcastable[:-2]) and not any(b.type.broadcastable[:-2]))


def stack_rows(a):
    """(T, *batch, m, k) -> (*batch, T*m, k): the steps' rows of a stacked matmul operand, so
    that sum_t a_t^T b_t is one (batched) matmul."""
    return np.moveaxis(a, 0, -3).reshape(*a.shape[1:-2], -1, a.shape[-1])


def differentiable(var):
    """Whether a gradient can reach `var`: a float variable computed from some float root
    (a source mask made from integer ids cannot carry one)."""
    return var.type.dtype.startswith("float") and any(
        getattr(v.type, "dtype", "").startswith("float") and not isinstance(v, Constant) for v in graph_inputs([var]))


class StepGraph:
    """One step as graphs over explicit inputs, and the functions compiled from them.

    x (B, P), the states [(B, H_k)] and the memory are the step's inputs; `shared` are the
    shared variables it reads (the weights), in the owner's `params` order.
    """

    def __init__(self, owner, step, n_states, memory_types, mode, n_extra=0):
        self.name, self.mode, self.n_states, self.n_extra = owner.name, mode, n_states, n_extra
        x = pt.matrix("x_t", dtype=FLOATX)
        states = [pt.matrix(f"state{k}", dtype=FLOATX) for k in range(n_states)]
        memory = [t(f"memory{k}") for k, t in enumerate(memory_types)]
        out = as_list(step(x, *states, *memory))
        if len(out) != n_states + n_extra:
            raise ValueError(f"{self.name}: the step returned {len(out)} outputs, expected {n_states} states"
                             + (f" and {n_extra} extras" if n_extra else ""))
        shared, foreign = [], []
        for var in graph_inputs(out):
            if isinstance(var, SharedVariable):
                shared.append(var)
            elif var is not x and var not in states and var not in memory and not isinstance(var, Constant):
                foreign.append(var)
        if foreign:
            raise UnsupportedStep(f"{self.name}: the step reads {', '.join(map(repr, foreign))}, which is not its "
                                  "input, state, memory, a shared variable or a constant (a random draw?)")
        not_float32 = [f"{v.name or v} ({v.type.dtype})" for v in shared if getattr(v.type, "dtype", None) != FLOATX]
        if not_float32:
            raise UnsupportedStep(f"{self.name}: the step reads shared variables that are not {FLOATX}: "
                                  f"{', '.join(not_float32)}")
        if any(v.type.dtype != FLOATX for v in out[n_states:]):
            raise UnsupportedStep(f"{self.name}: extra outputs must be float32")
        order = {id(p): i for i, p in enumerate(owner.params)}
        self.shared = sorted(shared, key=lambda v: order.get(id(v), len(order)))
        W = [v.type(f"w.{v.name}") for v in self.shared]
        out = clone_replace([o.astype(FLOATX) for o in out], replace=dict(zip(self.shared, W)))
        self.x, self.states, self.memory, self.W = x, states, memory, W
        self.extra_types = [o.type for o in out[n_states:]]
        self._split_matmuls(out)
        self.forward, self.backward = None, {}  # backward: (step, after-the-loop) by memory_grads

    def _split_matmuls(self, out):
        """Give the right operand of every matmul `a @ w(W, memory)` its own placeholder, so
        that the per-step gradient stops at the matmul's output; then decide what the forward
        pass saves."""
        constant = lambda v: _reads_only(v, [*self.W, *self.memory])  # noqa: E731  the same every step
        w_exprs = []
        for var in ancestors(out):
            node = var.owner
            # A matrix-vector product (attention's scores against v, one output column) and an
            # outer product (coverage's cov w_c, one inner column) are not cut: their per-step
            # weight gradient costs no more than stacking their operands, which would hold a
            # (Ts, B, A) array per step.
            if (node is not None and _is_matmul(node) and constant(node.inputs[1])
                    and not node.inputs[1].type.broadcastable[-1] and not node.inputs[0].type.broadcastable[-1]
                    and not constant(node.inputs[0]) and node.inputs[1] not in w_exprs):
                w_exprs.append(node.inputs[1])
        cut = [e.type() for e in w_exprs]
        out = clone_replace(out, replace=dict(zip(w_exprs, cut)))
        matmuls = [v.owner for v in ancestors(out) if v.owner is not None and _is_matmul(v.owner)
                   and v.owner.inputs[1] in cut]
        self.matmul_inputs = [node.inputs[0] for node in matmuls]  # a: (..., m, k) per matmul
        dots = [node.outputs[0] for node in matmuls]  # y = a @ w: (..., m, n)
        self.d_new = [s.type(f"d_new{k}") for k, s in enumerate(self.states)]
        self.d_extra = [t(f"d_extra{k}") for k, t in enumerate(self.extra_types)]
        vjp = sum(pt.sum(o * d) for o, d in zip(out, self.d_new + self.d_extra))
        fixed = [*self.states, self.x, *dots]
        grads = pytensor.grad(vjp, [*fixed, *self.memory, *self.W], disconnected_inputs="ignore",
                              return_disconnected="None")
        n_fixed, n_mem = len(fixed), len(self.memory)
        back_out = [pt.zeros_like(v) if g is None else g for g, v in zip(grads, fixed)]
        # Memory entries read outside a cut matmul, and weights read outside any matmul (a
        # scale, attention's v): their gradient is summed step by step.
        self.memory_per_step = [k for k, g in enumerate(grads[n_fixed : n_fixed + n_mem]) if g is not None]
        self.direct = [k for k, g in enumerate(grads[n_fixed + n_mem :]) if g is not None]
        back_out += [grads[n_fixed + k] for k in self.memory_per_step]
        back_out += [grads[n_fixed + n_mem + k] for k in self.direct]
        # Gradients rebuild some forward values (sigmoid'(x) makes a new sigmoid(x)): merge
        # them into the forward graph's, so that they are saved, not computed again.
        out, back_out, self.matmul_inputs = self._merged(out, back_out, self.matmul_inputs, cut)
        # A matmul whose output is added to x_t whole (the LSTM's gates x_t + h U) has x_t's
        # gradient: the loop stacks d x_t, not a second copy of it.
        n = len(self.states)
        self.dot_is_x = [back_out[n + 1 + k] is back_out[n] for k in range(len(dots))]
        # Saved: the forward values the backward graph reads, and each matmul's `a`.
        inputs = {self.x, *self.states, *self.memory, *self.W, *self.d_new, *self.d_extra}
        forward_vars = set(ancestors(out))
        forward_vars |= {v for v in ancestors(back_out) if v.owner is not None
                         and isinstance(v.owner.op, (Shape, Shape_i)) and v.owner.inputs[0] in forward_vars}
        boundary = [v for v in ancestors(back_out, blockers=forward_vars) if v in forward_vars]
        saved = []
        for v in boundary + self.matmul_inputs:
            if (v not in inputs and not isinstance(v, Constant) and not _reads_only(v, [*self.W, *self.memory, *cut])
                    and v not in saved):
                saved.append(v)
        self.saved = saved
        self.saved_in = [v.type() for v in saved]
        restore = dict(zip(cut, w_exprs))
        self._forward_out = clone_replace([*out, *saved], replace=restore)
        self._backward_out = clone_replace(back_out, replace={**restore, **dict(zip(saved, self.saved_in))})
        self._n_fixed = n_fixed
        self._cut = (w_exprs, matmuls, cut)
        self.n_matmuls = len(matmuls)

    def _merged(self, out, back_out, matmul_inputs, cut):
        """The three lists of variables with common subgraphs merged (one graph, shared nodes)."""
        inputs = [self.x, *self.states, *self.memory, *self.W, *cut, *self.d_new, *self.d_extra]
        outputs = [*out, *back_out, *matmul_inputs]
        equiv = clone_get_equiv(inputs, outputs, copy_inputs=False)
        fgraph = FunctionGraph(inputs, [equiv[o] for o in outputs], clone=False)
        MergeOptimizer().rewrite(fgraph)
        # The gradient of sum(A) broadcasts to A's shape as second(A, y); as alloc(y, *A.shape)
        # the backward pass reads only A's shape, which is saved instead of A (a (Ts, B, C)
        # array per step for attention).
        forward_vars = set(ancestors(fgraph.outputs[: len(out)]))
        for node in list(fgraph.toposort()):
            if (isinstance(node.op, Elemwise) and isinstance(node.op.scalar_op, Second)
                    and node.inputs[0] in forward_vars and node.outputs[0] not in forward_vars):
                a, y = node.inputs
                alloc = pt.alloc(y, *(1 if b else a.shape[i] for i, b in enumerate(a.type.broadcastable)))
                if alloc.type == node.outputs[0].type:
                    fgraph.replace(node.outputs[0], alloc, import_missing=True)
        MergeOptimizer().rewrite(fgraph)
        merged = list(fgraph.outputs)
        a, b = len(out), len(out) + len(back_out)
        return merged[:a], merged[a:b], merged[b:]

    def compile(self, memory_grads=None):
        """Compile the forward function and, given `memory_grads`, the backward one that
        returns the gradients of the memory entries it lists (once each; the outer
        function's compile calls this)."""
        constants = [*self.W, *self.memory]
        if self.forward is None:
            self.forward = _LoopFunction([self.x, *self.states], constants, self._forward_out, self.mode, views=True)
        if memory_grads is None or memory_grads in self.backward:
            return
        outs, n_fixed, n_step = self._backward_out, self._n_fixed, len(self.memory_per_step)
        keep = outs[:n_fixed] + [outs[n_fixed + i] for i, k in enumerate(self.memory_per_step) if k in memory_grads]
        keep += outs[n_fixed + n_step :]
        step = _LoopFunction([self.x, *self.states, *self.saved_in, *self.d_new, *self.d_extra], constants, keep, self.mode)
        # The gradients through every cut matmul at once, from the stacked a's and dy's:
        # d w = sum_t a_t^T dy_t, then on to the weights and memory entries w reads.
        w_exprs, matmuls, cut = self._cut
        after = None
        if matmuls:
            stacked = lambda v: pt.tensor(dtype=v.type.dtype, shape=(None,) * v.type.ndim)  # noqa: E731  T*m rows
            A = [stacked(node.inputs[0]) for node in matmuls]
            dY = [stacked(node.outputs[0]) for node in matmuls]
            restore = dict(zip(cut, w_exprs))
            cost = sum(pt.sum(pt.matmul(a, restore[node.inputs[1]]) * dy) for a, dy, node in zip(A, dY, matmuls))
            wrt = [*self.W, *(self.memory[k] for k in memory_grads)]
            grads = pytensor.grad(cost, wrt, disconnected_inputs="ignore", return_disconnected="zero")
            after = _compile([*A, *dY, *self.W, *self.memory], grads, self.mode)
        self.backward[memory_grads] = (step, after)

    def source_of(self, var):
        """Where a matmul's `a` comes from: ("x",), ("state", k) or ("saved", j)."""
        if var is self.x:
            return ("x",)
        if var in self.states:
            return ("state", self.states.index(var))
        return ("saved", self.saved.index(var))


def _compile(inputs, outputs, mode, borrow=False, views=False):
    """`borrow`: outputs that are views of one another stay views (PyTensor would copy each
    such output at every call); the caller only reads them, and every call returns new
    arrays (the function clears its outputs' storage after each call). `views`: outputs may
    also view the inputs (else copied at every call: U, or a state that a step passes on);
    for callers that leave those inputs unchanged while they read the outputs."""
    if borrow:
        outputs = [pytensor.Out(o, borrow=True) for o in outputs]
    if views:
        inputs = [pytensor.In(v, borrow=True) for v in inputs]
    fn = pytensor.function(inputs, outputs, mode=mode, on_unused_input="ignore", accept_inplace=True)
    fn.trust_input = True  # called thousands of times with arrays we made ourselves
    return fn


class _LoopFunction:
    """A per-step function whose parts that read only the loop's constants (weights, memory)
    are computed once per loop: `bind(constants)`, then `f(*step_inputs)` runs a step. The
    slices and transposes of U are made contiguous for the BLAS (a strided U[:, :2H].T made
    a step's matmul 2x slower); the others are the weights and memory themselves, or views
    of them, not copies: they are only read, while the loop runs. `views`: the step's
    outputs may view its inputs (the forward step: its inputs, slices of the loop's
    sequences, stay as they are until the backward pass has read them)."""

    def __init__(self, inputs, constants, outputs, mode, views=False):
        # What reads the loop's constants and nothing else; an expression of literal
        # constants alone stays in the step, where the compiler folds it.
        only_constants = lambda v: _reads_only(v, constants) and not _reads_only(v, [])  # noqa: E731
        hoisted = []
        for var in ancestors(outputs):
            node = var.owner
            if node is None or all(only_constants(o) for o in node.outputs):
                continue
            for v in node.inputs:
                if only_constants(v) and not isinstance(v, Constant) and v not in hoisted:
                    hoisted.append(v)
        hoisted += [o for o in outputs if only_constants(o) and not isinstance(o, Constant) and o not in hoisted]
        self.constants_in = [v.type() for v in hoisted]
        outputs = clone_replace(outputs, replace=dict(zip(hoisted, self.constants_in)))
        self.step = _compile([*inputs, *self.constants_in], outputs, mode, borrow=True, views=views)
        self.make_constants = _compile(list(constants), hoisted, mode, borrow=True, views=True) if hoisted else None
        # A batched matmul takes a strided (B, k, n) operand as it is (the attention's
        # annotations transposed: as fast as a copy per step, and numpy's transposing copy
        # of them took 5 ms a loop); everything else is made contiguous.
        fgraph = self.step.maker.fgraph
        strided_ok = lambda node: isinstance(getattr(node.op, "op", node.op), (BatchedDot, Shape, Shape_i))  # noqa: E731
        self.contiguous = [var.type.ndim < 3 or not all(strided_ok(node) for node, _ in fgraph.clients[var])
                           for var in fgraph.inputs[len(inputs):]]
        self.constants = []

    def bind(self, constants):
        if self.make_constants is not None:
            # (np.ascontiguousarray, contiguous's fallback, makes a 0-d array 1-d)
            self.constants = [thunks.contiguous(c) if keep and np.ndim(c) else c
                              for c, keep in zip(self.make_constants(*constants), self.contiguous)]

    def __call__(self, *inputs):
        return self.step(*inputs, *self.constants)
