"""Any step's masked time loop as one op, forward and backward derived from its own graph.

Under `pytensor.scan` a timestep of this model costs about 4.7 ms where its maths takes 1.5
(shared/PERF-NOTES.md). `step_loop(owner, step, ...)` instead takes the graph of one step,

    step(x_t, *state, *memory) -> [*new_state, *extra]

(a cell's `recur`, or the attention decoder's `attend`), splits it the way a hand-written
kernel would, and compiles two functions that a numpy loop calls once per timestep:

    forward(x_t, *state)                          -> *new_state, *extra, *saved     (T calls)
    backward(x_t, *state, *saved, *d_new, *d_extra) -> *d_state, d x_t, *d dots, *d memory

`memory` (an attention decoder's annotations, keys and source mask) and the weights are the
same at every step: what reads only them is computed once per loop, and the gradient of
`memory` is summed over the steps. `extra` are per-step outputs that are not fed back (the
attention context and weights), returned as sequences. `saved` are the forward values that
the backward graph reads, so nothing is computed twice. Every matmul of the step with a
weight, `y = a @ w(W)` (the cell's `h @ U`), is cut out of the per-step gradient: the loop
only returns d y_t, and after it the weight gradient comes from one large matmul over all
timesteps, sum_t a_t^T dy_t = A^T dY, as in kernels.py's GRU. Weights used any other way (a
peephole, a scale, attention's `v`) get their gradient summed step by step.

What the op computes is exactly what `step` computes, for any cell and any subclass that
overrides `recur` or `attend`: there is no second copy of the equations, and the mask is
applied outside the step as in `layers.Recurrent.scan` (a padded step carries the state
through; extras are not masked). A step that reads anything but its input, its state, its
memory, shared variables and constants (a random draw, a variable from an outer graph)
cannot be compiled on its own: `step_loop` then returns None and the owner runs under scan,
as it does in the NUMBA compile mode.
"""
import numpy as np

import backend
import pytensor
import pytensor.tensor as pt
from pytensor.compile.sharedvalue import SharedVariable
from pytensor.gradient import DisconnectedType
from pytensor.graph.basic import Apply, Constant, clone_get_equiv
from pytensor.graph.fg import FunctionGraph
from pytensor.graph.op import Op
from pytensor.link.c.type import Generic, generic
from pytensor.graph.replace import clone_replace
from pytensor.graph.rewriting.basic import MergeOptimizer
from pytensor.graph.traversal import ancestors, graph_inputs
from pytensor.tensor.blockwise import Blockwise
from pytensor.scalar.basic import Second
from pytensor.tensor.elemwise import Elemwise
from pytensor.tensor.math import Dot
from pytensor.tensor.shape import Shape, Shape_i

FLOATX = "float32"


class UnsupportedStep(TypeError):
    """A step that reads something other than its input, state, memory, shared variables and
    constants, or returns what the loop cannot carry; it runs under scan."""


def _as_list(out):
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


def _stack_rows(a):
    """(T, *batch, m, k) -> (*batch, T*m, k): the steps' rows of a stacked matmul operand, so
    that sum_t a_t^T b_t is one (batched) matmul."""
    return np.moveaxis(a, 0, -3).reshape(*a.shape[1:-2], -1, a.shape[-1])


def _differentiable(var):
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
        out = _as_list(step(x, *states, *memory))
        if len(out) != n_states + n_extra:
            raise ValueError(f"{self.name}: the step returned {len(out)} outputs, expected {n_states} states"
                             + (f" and {n_extra} extras" if n_extra else ""))
        shared, foreign = [], []
        for var in graph_inputs(out):
            if isinstance(var, SharedVariable):
                shared.append(var)
            elif var is not x and var not in states and var not in memory and not isinstance(var, Constant):
                foreign.append(var)
        if foreign or any(getattr(v.type, "dtype", None) != FLOATX for v in shared):
            raise UnsupportedStep(f"{self.name}: the step reads {foreign or 'shared variables that are not float32'}")
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
            # A matrix-vector product (attention's scores against v, one output column) is not
            # cut: its per-step weight gradient costs no more than stacking its input.
            if (node is not None and _is_matmul(node) and constant(node.inputs[1])
                    and not node.inputs[1].type.broadcastable[-1]
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
            self.forward = _LoopFunction([self.x, *self.states], constants, self._forward_out, self.mode)
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


def _compile(inputs, outputs, mode):
    fn = pytensor.function(inputs, outputs, mode=mode, on_unused_input="ignore", accept_inplace=True)
    fn.trust_input = True  # called thousands of times with arrays we made ourselves
    return fn


class _LoopFunction:
    """A per-step function whose parts that read only the loop's constants (weights, memory)
    are computed once per loop: `bind(constants)`, then `f(*step_inputs)` runs a step. The
    slices and transposes of U are made contiguous for the BLAS (a strided U[:, :2H].T made
    a step's matmul 2x slower)."""

    def __init__(self, inputs, constants, outputs, mode):
        only_constants = lambda v: _reads_only(v, constants)  # noqa: E731
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
        self.step = _compile([*inputs, *self.constants_in], outputs, mode)
        self.make_constants = _compile(list(constants), hoisted, mode) if hoisted else None
        self.constants = []

    def bind(self, constants):
        if self.make_constants is not None:
            # (np.ascontiguousarray makes a 0-d array 1-d)
            self.constants = [np.ascontiguousarray(c) if np.ndim(c) else c for c in self.make_constants(*constants)]

    def __call__(self, *inputs):
        return self.step(*inputs, *self.constants)


class StepLoop(Op):
    """(x_proj (T, B, P), mask (T, B), *init (B, H_k), *memory, *weights) -> state sequences
    (T, B, H_k), extra sequences (T, ...), and the tape: a Python list holding, per step,
    the forward values StepLoopGrad reads. The compiled step returns new arrays at every
    call, so the tape keeps them as they are; copying them into (T, ...) arrays cost a
    quarter of the loop's time for attention. One op per owner, step and memory types, kept
    on the owner."""

    def __init__(self, owner, step, n_states, memory_types, mode, n_extra=0):
        self.owner_name, self.n_states, self.n_extra = owner.name, n_states, n_extra
        self.n_memory = len(memory_types)
        self.graph = StepGraph(owner, step, n_states, memory_types, mode, n_extra)

    def __str__(self):
        return f"StepLoop{{{self.owner_name}}}"

    def make_node(self, x_proj, mask, *rest):
        n = self.n_states
        inputs = [pt.as_tensor_variable(v).astype(FLOATX) for v in (x_proj, mask, *rest[:n])]
        inputs += [pt.as_tensor_variable(v) for v in rest[n:]]
        seq = lambda t: pt.tensor(dtype=t.dtype, shape=(None,) * (t.ndim + 1))  # noqa: E731  (T, ...)
        outputs = [pt.tensor3(dtype=FLOATX) for _ in range(n)] + [seq(t) for t in self.graph.extra_types]
        return Apply(self, inputs, outputs + [generic()])

    def prepare_node(self, node, storage_map, compute_map, impl):
        self.graph.compile()  # with the outer function, not on its first call

    def perform(self, node, inputs, outputs):
        n, n_out = self.n_states, self.n_states + self.n_extra
        x, mask, init, constants = inputs[0], inputs[1], inputs[2 : 2 + n], inputs[2 + n :]
        graph = self.graph
        graph.compile()
        graph.forward.bind([*constants[self.n_memory:], *constants[: self.n_memory]])
        T = x.shape[0]
        seqs = [np.empty((T, *s.shape), FLOATX) for s in init]
        extras = [np.empty((T,) + (0,) * t.ndim, t.dtype) for t in graph.extra_types]
        tape = []
        prev = list(init)
        for t in range(T):
            out = graph.forward(x[t], *prev)
            if t == 0:
                extras = [np.empty((T, *v.shape), v.dtype) for v in out[n:n_out]]
            for buf, v in zip(extras, out[n:n_out]):
                buf[t] = v
            tape.append(out[n_out:])
            m = mask[t][:, None]  # (B, 1)
            for k in range(n):
                # s_t = s_{t-1} + m * (new - s_{t-1}): padding carries the state through
                np.subtract(out[k], prev[k], out=seqs[k][t])
                seqs[k][t] *= m
                seqs[k][t] += prev[k]
            prev = [s[t] for s in seqs]
        for k, value in enumerate(seqs + extras + [tape]):
            outputs[k][0] = value

    def _memory_grads(self, inputs):
        """Indices of the memory entries a gradient can reach (see _differentiable)."""
        start = 2 + self.n_states
        return tuple(k for k in range(self.n_memory) if _differentiable(inputs[start + k]))

    def connection_pattern(self, node):
        n_out, n_diff = len(node.outputs), self.n_states + self.n_extra
        differentiable = [k < n_diff for k in range(n_out)]
        memory = [differentiable if k in self._memory_grads(node.inputs) else [False] * n_out for k in range(self.n_memory)]
        return [differentiable, [False] * n_out] + [differentiable] * self.n_states + memory + \
            [differentiable for _ in node.inputs[2 + self.n_states + self.n_memory:]]

    def pullback(self, inputs, outputs, output_grads):
        n, n_diff = self.n_states, self.n_states + self.n_extra
        grads = [pt.zeros_like(o) if isinstance(g.type, DisconnectedType) else g
                 for o, g in zip(outputs[:n_diff], output_grads[:n_diff])]
        memory_grads = self._memory_grads(inputs)
        results = _as_list(StepLoopGrad(self, memory_grads)(*inputs, *outputs[:n], outputs[-1], *grads))
        d_memory = iter(results[1 + n : 1 + n + len(memory_grads)])
        memory = [next(d_memory) if k in memory_grads else DisconnectedType()() for k in range(self.n_memory)]
        return [results[0], DisconnectedType()(), *results[1 : 1 + n], *memory, *results[1 + n + len(memory_grads):]]


class StepLoopGrad(Op):
    """Backward pass of StepLoop: (x_proj, mask, *init, *memory, *weights, *states, tape,
    *d states, *d extras) -> (d x_proj, *d init, *d memory (the entries in `memory_grads`),
    *d weights)."""

    def __init__(self, forward, memory_grads):
        self.forward, self.memory_grads = forward, tuple(memory_grads)

    def __str__(self):
        return f"StepLoopGrad{{{self.forward.owner_name}}}"

    def _split(self, inputs):
        fwd = self.forward
        n, n_mem, n_w, n_extra = fwd.n_states, fwd.n_memory, len(fwd.graph.shared), fwd.n_extra
        parts, start = [], 0
        for size in (1, 1, n, n_mem, n_w, n, 1, n, n_extra):
            parts.append(inputs[start : start + size])
            start += size
        (x,), (mask,), init, memory, weights, seqs, (tape,), g_seqs, g_extra = parts
        return x, mask, init, memory, weights, seqs, tape, g_seqs, g_extra

    def make_node(self, *inputs):
        inputs = [v if isinstance(v.type, Generic) else pt.as_tensor_variable(v) for v in inputs]
        x, _, init, memory, weights, *_ = self._split(inputs)
        outputs = [x.type()] + [s.type() for s in init] + [memory[k].type() for k in self.memory_grads]
        return Apply(self, inputs, outputs + [w.type() for w in weights])

    def prepare_node(self, node, storage_map, compute_map, impl):
        self.forward.graph.compile(self.memory_grads)

    def perform(self, node, inputs, outputs):
        graph, n = self.forward.graph, self.forward.n_states
        graph.compile(self.memory_grads)
        backward, after = graph.backward[self.memory_grads]
        x, mask, init, memory, weights, seqs, tape, g_seqs, g_extra = self._split(inputs)
        T = mask.shape[0]
        backward.bind([*weights, *memory])
        dx = np.empty_like(x)
        d_state = [np.zeros_like(s) for s in init]
        d_new = [np.empty_like(s) for s in init]
        d_memory = [np.zeros_like(memory[k]) for k in self.memory_grads]
        d_matmul = [[] for _ in range(graph.n_matmuls)]  # the gradient at each matmul's output, per step
        d_weights = [np.zeros_like(w) for w in weights]
        n_mm = graph.n_matmuls
        per_step = [self.memory_grads.index(k) for k in graph.memory_per_step if k in self.memory_grads]
        for t in range(T - 1, -1, -1):
            m = mask[t][:, None]  # (B, 1)
            prev = [s[t - 1] if t > 0 else s0 for s, s0 in zip(seqs, init)]
            for k in range(n):
                d_state[k] += g_seqs[k][t]
                np.multiply(d_state[k], m, out=d_new[k])  # through the new state ...
                d_state[k] -= d_new[k]  # ... and (1 - m) straight to the previous one
            out = backward(x[t], *prev, *tape[t], *d_new, *(g[t] for g in g_extra))
            for k in range(n):
                d_state[k] += out[k]
            dx[t] = out[n]
            for steps, g in zip(d_matmul, out[n + 1 : n + 1 + n_mm]):
                steps.append(g)
            for i, g in zip(per_step, out[n + 1 + n_mm : n + 1 + n_mm + len(per_step)]):
                d_memory[i] += g
            for k, g in zip(graph.direct, out[n + 1 + n_mm + len(per_step) :]):
                d_weights[k] += g
        if after is not None and T > 0:
            A = []
            for var in graph.matmul_inputs:
                source = graph.source_of(var)
                if source[0] == "x":
                    A.append(x)
                elif source[0] == "state":  # the state each step read: init, then states[:-1]
                    s, s0 = seqs[source[1]], init[source[1]]
                    A.append(np.concatenate([s0[None], s[:-1]], axis=0))
                else:
                    A.append(np.stack([step[source[1]] for step in tape]))
            stacked = [_stack_rows(a) for a in A] + [_stack_rows(np.stack(steps[::-1])) for steps in d_matmul]
            for acc, g in zip(d_weights + d_memory, after(*stacked, *weights, *memory)):
                acc += g
        for k, value in enumerate([dx, *d_state, *d_memory, *d_weights]):
            outputs[k][0] = value


def step_loop(owner, step, n_states, x_proj, mask, init, memory=(), n_extra=0, mode=backend.DEFAULT_MODE,
              key=None, weights=None):
    """The masked loop of `step(x_t, *state, *memory) -> [*new_state, *extra]` over x_proj
    (T, B, P) with `mask` (T, B), from the initial state list `init`: a list of n_states
    state sequences (T, B, H_k) and n_extra extra sequences; or None when the step cannot be
    compiled on its own (see the module docstring). `owner` is the module whose `params` the
    step reads; the op and its compiled step are built once per owner, step (or `key`, for a
    step made anew at each call), compile mode (a name in backend.MODES) and memory types,
    and kept on the owner. `weights` maps some of the owner's params to what the step reads
    in their place for this loop (weight-drop's U * mask): they are inputs of the op."""
    if mode == "NUMBA":  # Numba compiles scan itself, and has no type for the tape
        return None
    memory = [pt.as_tensor_variable(v) for v in memory]
    key = (mode, key or getattr(step, "__func__", step), tuple(v.type for v in memory))
    ops = owner.__dict__.setdefault("_step_loops", {})
    if key not in ops:
        try:
            ops[key] = StepLoop(owner, step, n_states, [v.type for v in memory], backend.compile_mode(mode), n_extra)
        except UnsupportedStep:
            ops[key] = None
    op = ops[key]
    if op is None:
        return None
    weights = weights or {}
    shared = [weights.get(w, w) for w in op.graph.shared]
    return _as_list(op(x_proj, mask, *init, *memory, *shared))[: n_states + n_extra]


def cell_loop(cell, x_proj, mask, init, mode=backend.DEFAULT_MODE, weights=None):
    """The state sequences of `cell` over x_proj (T, B, P) with `mask` (T, B), from the
    initial state list `init`: a list of (T, B, H_k), as `Recurrent.scan` returns; or None
    when the cell's step cannot be compiled on its own."""
    return step_loop(cell, cell.recur, cell.n_states, x_proj, mask, init, mode=mode, weights=weights)
