"""Any cell's masked time loop as one op, forward and backward derived from its own `recur`.

Under `pytensor.scan` a timestep of this model costs about 4.7 ms where its maths takes 1.5
(shared/PERF-NOTES.md). `cell_loop(cell, x_proj, mask, init)` instead takes the graph of one
`cell.recur` step, splits it the way a hand-written kernel would, and compiles two functions
that a numpy loop calls once per timestep:

    forward(x_t, *state, *W)                     -> *new_state, *saved       (T calls)
    backward(x_t, *state, *W, *saved, *d_new)    -> *d_state, d x_t, *d dots (T calls)

`saved` are the forward values that the backward graph reads, so nothing is computed twice.
Every matmul of the step with a weight, `y = a @ w(W)` (the cell's `h @ U`), is cut out of
the per-step gradient: the loop only returns d y_t, and after it the weight gradient comes
from one large matmul over all timesteps, sum_t a_t^T dy_t = A^T dY, as in kernels.py's GRU.
Weights used any other way (a peephole, a scale) get their gradient summed step by step.

What the op computes is exactly what `cell.recur` computes, for any cell and any subclass
that overrides `recur`: there is no second copy of the equations, and the mask is applied
outside the cell as in `layers.Recurrent.scan` (a padded step carries the state through).
A step that reads anything but its input, its state, shared variables and constants (a
random draw, a variable from an outer graph) cannot be compiled on its own: `cell_loop` then
returns None and the cell runs under scan.
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
from pytensor.graph.replace import clone_replace
from pytensor.graph.rewriting.basic import MergeOptimizer
from pytensor.graph.traversal import ancestors, graph_inputs
from pytensor.tensor.blockwise import Blockwise
from pytensor.tensor.math import Dot

FLOATX = "float32"


class UnsupportedStep(TypeError):
    """A cell whose step reads something other than its input, state, shared variables and
    constants; it runs under scan."""


def _as_list(out):
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _reads_only(var, allowed):
    """Whether `var` is computed from constants and the variables in `allowed` alone."""
    return all(i in allowed or isinstance(i, Constant) for i in graph_inputs([var]))


def _is_matmul(node):
    op = node.op
    return (isinstance(op, Dot) or (isinstance(op, Blockwise) and isinstance(op.core_op, Dot))) and all(
        v.type.ndim == 2 for v in node.inputs)


class StepGraph:
    """One `cell.recur` step as graphs over explicit inputs, and the functions compiled from them.

    x (B, P) and the states [(B, H_k)] are the per-step inputs; `shared` are the shared
    variables the step reads (the weights), in the cell's `params` order.
    """

    def __init__(self, cell, mode):
        self.name, self.mode = cell.name, mode
        x = pt.matrix("x_t", dtype=FLOATX)
        states = [pt.matrix(f"state{k}", dtype=FLOATX) for k in range(cell.n_states)]
        new = _as_list(cell.recur(x, *states))
        if len(new) != cell.n_states:
            raise ValueError(f"{cell.name}: recur returned {len(new)} states, n_states is {cell.n_states}")
        shared, foreign = [], []
        for var in graph_inputs(new):
            if isinstance(var, SharedVariable):
                shared.append(var)
            elif var is not x and var not in states and not isinstance(var, Constant):
                foreign.append(var)
        if foreign or any(getattr(v.type, "dtype", None) != FLOATX for v in shared):
            raise UnsupportedStep(f"{cell.name}: recur reads {foreign or 'shared variables that are not float32'}")
        order = {id(p): i for i, p in enumerate(cell.params)}
        self.shared = sorted(shared, key=lambda v: order.get(id(v), len(order)))
        W = [v.type(f"w.{v.name}") for v in self.shared]
        new = clone_replace([n.astype(FLOATX) for n in new], replace=dict(zip(self.shared, W)))
        self.x, self.states, self.W = x, states, W
        self._split_matmuls(new)
        self.forward = self.backward = self.weight_grad = None

    def _split_matmuls(self, new):
        """Give every matmul `a @ w(W)` its own weight placeholder, so that the per-step
        gradient stops at its output; then decide what the forward pass saves."""
        weights_only = lambda v: _reads_only(v, self.W)  # noqa: E731
        w_exprs = []
        for var in ancestors(new):
            node = var.owner
            if node is not None and _is_matmul(node) and weights_only(node.inputs[1]) and not weights_only(node.inputs[0]):
                if node.inputs[1] not in w_exprs:
                    w_exprs.append(node.inputs[1])
        cut = [e.type() for e in w_exprs]
        new = clone_replace(new, replace=dict(zip(w_exprs, cut)))
        matmuls = [v.owner for v in ancestors(new) if v.owner is not None and _is_matmul(v.owner)
                   and v.owner.inputs[1] in cut]
        self.matmul_inputs = [node.inputs[0] for node in matmuls]  # a: (B, k) per matmul
        outs = [node.outputs[0] for node in matmuls]  # y = a @ w: (B, n)
        self.d_new = [s.type(f"d_new{k}") for k, s in enumerate(self.states)]
        vjp = sum(pt.sum(n * d) for n, d in zip(new, self.d_new))
        grads = pytensor.grad(vjp, [*self.states, self.x, *outs, *self.W], disconnected_inputs="ignore",
                              return_disconnected="None")
        n_fixed = len(self.states) + 1 + len(outs)
        zero = lambda v: pt.zeros_like(v)  # noqa: E731
        fixed = [g if g is not None else zero(v) for g, v in zip(grads[:n_fixed], [*self.states, self.x, *outs])]
        # Weights read outside a matmul (rare): their gradient is summed step by step.
        self.direct = [k for k, g in enumerate(grads[n_fixed:]) if g is not None]
        back_out = fixed + [grads[n_fixed + k] for k in self.direct]
        # Gradients rebuild some forward values (sigmoid'(x) makes a new sigmoid(x)): merge
        # them into the forward graph's, so that they are saved, not computed again.
        new, back_out, self.matmul_inputs = self._merged(new, back_out, self.matmul_inputs, cut)
        # Saved: the forward values the backward graph reads, and each matmul's `a`.
        consts = lambda v: _reads_only(v, [*self.W, *cut])  # noqa: E731
        inputs = {self.x, *self.states, *self.W, *self.d_new}
        forward_vars = set(ancestors(new))
        boundary = [v for v in ancestors(back_out, blockers=forward_vars) if v in forward_vars]
        saved = []
        for v in boundary + self.matmul_inputs:
            if v not in inputs and not isinstance(v, Constant) and not consts(v) and v not in saved:
                saved.append(v)
        self.saved = saved
        self.saved_in = [v.type() for v in saved]
        restore = dict(zip(cut, w_exprs))
        self._forward_out = clone_replace([*new, *saved], replace=restore)
        self._backward_out = clone_replace(back_out, replace={**restore, **dict(zip(saved, self.saved_in))})
        self._weight_grad = (w_exprs, matmuls, cut)
        self.n_matmuls = len(matmuls)

    def _merged(self, new, back_out, matmul_inputs, cut):
        """The three lists of variables with common subgraphs merged (one graph, shared nodes)."""
        inputs = [self.x, *self.states, *self.W, *cut, *self.d_new]
        outputs = [*new, *back_out, *matmul_inputs]
        equiv = clone_get_equiv(inputs, outputs, copy_inputs=False)
        fgraph = FunctionGraph(inputs, [equiv[o] for o in outputs], clone=False)
        MergeOptimizer().rewrite(fgraph)
        merged = list(fgraph.outputs)
        a, b = len(new), len(new) + len(back_out)
        return merged[:a], merged[a:b], merged[b:]

    def compile(self):
        """Compile the functions (once; the outer function's compile calls this)."""
        if self.forward is not None:
            return
        self.forward = _LoopFunction([self.x, *self.states], self.W, self._forward_out, self.mode)
        self.backward = _LoopFunction([self.x, *self.states, *self.saved_in, *self.d_new], self.W,
                                      self._backward_out, self.mode)
        # The weight gradient of every matmul at once, from the stacked a's and dy's.
        w_exprs, matmuls, cut = self._weight_grad
        if matmuls:
            A = [node.inputs[0].type() for node in matmuls]
            dY = [node.outputs[0].type() for node in matmuls]
            restore = dict(zip(cut, w_exprs))
            cost = sum(pt.sum(pt.dot(a, restore[node.inputs[1]]) * dy) for a, dy, node in zip(A, dY, matmuls))
            grads = pytensor.grad(cost, self.W, disconnected_inputs="ignore", return_disconnected="zero")
            self.weight_grad = _compile([*A, *dY, *self.W], grads, self.mode)

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
    """A per-step function whose weight-only parts are loop constants: `bind(weights)` computes
    them once per loop (the slices and transposes of U, made contiguous for the BLAS; a
    strided U[:, :2H].T made a step's matmul 2x slower), then `f(*step_inputs)` runs a step."""

    def __init__(self, inputs, weights, outputs, mode):
        only_weights = lambda v: _reads_only(v, weights)  # noqa: E731
        hoisted = []
        for var in ancestors(outputs):
            node = var.owner
            if node is None or all(only_weights(o) for o in node.outputs):
                continue
            for v in node.inputs:
                if only_weights(v) and not isinstance(v, Constant) and v not in hoisted:
                    hoisted.append(v)
        self.constants_in = [v.type() for v in hoisted]
        outputs = clone_replace(outputs, replace=dict(zip(hoisted, self.constants_in)))
        self.step = _compile([*inputs, *self.constants_in], outputs, mode)
        self.make_constants = _compile(list(weights), hoisted, mode) if hoisted else None
        self.constants = []

    def bind(self, weights):
        if self.make_constants is not None:
            self.constants = [np.ascontiguousarray(c) for c in self.make_constants(*weights)]

    def __call__(self, *inputs):
        return self.step(*inputs, *self.constants)


class CellLoop(Op):
    """(x_proj (T, B, P), mask (T, B), *init (B, H_k), *weights) -> state sequences
    (T, B, H_k), then the saved forward values (T, ...) that CellLoopGrad reads.
    One op per cell, kept on the cell (`cell_loop`)."""

    def __init__(self, cell, mode):
        self.cell_name = cell.name
        self.graph = StepGraph(cell, mode)
        self.n_states = cell.n_states

    def __str__(self):
        return f"CellLoop{{{self.cell_name}}}"

    def make_node(self, x_proj, mask, *rest):
        inputs = [pt.as_tensor_variable(v).astype(FLOATX) for v in (x_proj, mask, *rest[: self.n_states])]
        inputs += [pt.as_tensor_variable(w) for w in rest[self.n_states :]]
        outputs = [pt.tensor3(dtype=FLOATX) for _ in range(self.n_states)]
        outputs += [pt.tensor(dtype=v.type.dtype, shape=(None,) * (v.type.ndim + 1)) for v in self.graph.saved]
        return Apply(self, inputs, outputs)

    def prepare_node(self, node, storage_map, compute_map, impl):
        self.graph.compile()  # with the outer function, not on its first call

    def perform(self, node, inputs, outputs):
        n = self.n_states
        x, mask, init, weights = inputs[0], inputs[1], inputs[2 : 2 + n], inputs[2 + n :]
        self.graph.compile()
        self.graph.forward.bind(weights)
        T = x.shape[0]
        seqs = [np.empty((T, *s.shape), FLOATX) for s in init]
        saved = None
        prev = list(init)
        for t in range(T):
            out = self.graph.forward(x[t], *prev)
            if saved is None:
                saved = [np.empty((T, *np.shape(v)), np.asarray(v).dtype) for v in out[n:]]
            for buf, v in zip(saved, out[n:]):
                buf[t] = v
            m = mask[t][:, None]  # (B, 1)
            for k in range(n):
                # s_t = s_{t-1} + m * (new - s_{t-1}): padding carries the state through
                np.subtract(out[k], prev[k], out=seqs[k][t])
                seqs[k][t] *= m
                seqs[k][t] += prev[k]
            prev = [s[t] for s in seqs]
        if saved is None:  # T == 0
            saved = [np.empty((0,) * (v.type.ndim + 1), v.type.dtype) for v in self.graph.saved]
        for k, value in enumerate(seqs + saved):
            outputs[k][0] = value

    def connection_pattern(self, node):
        n_out = len(node.outputs)
        differentiable = [k < self.n_states for k in range(n_out)]
        return [differentiable, [False] * n_out] + [differentiable for _ in node.inputs[2:]]

    def pullback(self, inputs, outputs, output_grads):
        n = self.n_states
        if any(not isinstance(g.type, DisconnectedType) for g in output_grads[n:]):
            raise NotImplementedError(f"{self}: only the state sequences are differentiable")
        grads = [pt.zeros_like(o) if isinstance(g.type, DisconnectedType) else g
                 for o, g in zip(outputs[:n], output_grads[:n])]
        results = _as_list(CellLoopGrad(self)(*inputs, *outputs, *grads))
        return [results[0], DisconnectedType()(), *results[1:]]


class CellLoopGrad(Op):
    """Backward pass of CellLoop: (x_proj, mask, *init, *weights, *states, *saved, *d states)
    -> (d x_proj, *d init, *d weights)."""

    def __init__(self, forward):
        self.forward = forward

    def __str__(self):
        return f"CellLoopGrad{{{self.forward.cell_name}}}"

    def _split(self, inputs):
        n, n_saved = self.forward.n_states, len(self.forward.graph.saved)
        n_w = len(inputs) - 2 - n - n - n_saved - n
        x, mask, init = inputs[0], inputs[1], inputs[2 : 2 + n]
        rest = inputs[2 + n :]
        return x, mask, init, rest[:n_w], rest[n_w : n_w + n], rest[n_w + n : n_w + n + n_saved], rest[n_w + n + n_saved :]

    def make_node(self, *inputs):
        inputs = [pt.as_tensor_variable(v) for v in inputs]
        x, _, init, weights, *_ = self._split(inputs)
        return Apply(self, inputs, [x.type()] + [s.type() for s in init] + [w.type() for w in weights])

    def prepare_node(self, node, storage_map, compute_map, impl):
        self.forward.graph.compile()

    def perform(self, node, inputs, outputs):
        graph, n = self.forward.graph, self.forward.n_states
        graph.compile()
        x, mask, init, weights, seqs, saved, g_seqs = self._split(inputs)
        T, B = mask.shape
        graph.backward.bind(weights)
        dx = np.empty_like(x)
        d_state = [np.zeros_like(s) for s in init]
        d_new = [np.empty_like(s) for s in init]
        d_matmul = None  # (T, B, n_j): the gradient at each matmul's output, every step
        d_weights = [np.zeros_like(w) for w in weights]
        for t in range(T - 1, -1, -1):
            m = mask[t][:, None]  # (B, 1)
            prev = [s[t - 1] if t > 0 else s0 for s, s0 in zip(seqs, init)]
            for k in range(n):
                d_state[k] += g_seqs[k][t]
                np.multiply(d_state[k], m, out=d_new[k])  # through the new state ...
                d_state[k] -= d_new[k]  # ... and (1 - m) straight to the previous one
            out = graph.backward(x[t], *prev, *(s[t] for s in saved), *d_new)
            for k in range(n):
                d_state[k] += out[k]
            dx[t] = out[n]
            matmul_grads = out[n + 1 : n + 1 + graph.n_matmuls]
            if d_matmul is None:
                d_matmul = [np.empty((T, *g.shape), FLOATX) for g in matmul_grads]
            for buf, g in zip(d_matmul, matmul_grads):
                buf[t] = g
            for k, g in zip(graph.direct, out[n + 1 + graph.n_matmuls :]):
                d_weights[k] += g
        if graph.weight_grad is not None and T > 0:
            flat = lambda a: a.reshape(T * B, -1)  # noqa: E731  (T, B, k) -> (T*B, k)
            A = []
            for var in graph.matmul_inputs:
                source = graph.source_of(var)
                if source[0] == "x":
                    A.append(flat(x))
                elif source[0] == "state":  # the state each step read: init, then states[:-1]
                    s, s0 = seqs[source[1]], init[source[1]]
                    A.append(np.concatenate([s0[None], s[:-1]], axis=0).reshape(T * B, -1))
                else:
                    A.append(flat(saved[source[1]]))
            for acc, g in zip(d_weights, graph.weight_grad(*A, *map(flat, d_matmul), *weights)):
                acc += g
        outputs[0][0] = dx
        for k in range(n):
            outputs[1 + k][0] = d_state[k]
        for k, g in enumerate(d_weights):
            outputs[1 + n + k][0] = g


def cell_loop(cell, x_proj, mask, init, mode=backend.DEFAULT_MODE):
    """The state sequences of `cell` over x_proj (T, B, P) with `mask` (T, B), from the
    initial state list `init`: a list of (T, B, H_k), as `Recurrent.scan` returns; or None
    when the cell's step cannot be compiled on its own (see the module docstring). The op
    and its compiled step are built once per cell and compile mode (a name in backend.MODES)
    and kept on the cell."""
    ops = cell.__dict__.setdefault("_cell_loops", {})
    if mode not in ops:
        try:
            ops[mode] = CellLoop(cell, backend.compile_mode(mode))
        except UnsupportedStep:
            ops[mode] = None
    op = ops[mode]
    return None if op is None else _as_list(op(x_proj, mask, *init, *op.graph.shared))[: cell.n_states]
