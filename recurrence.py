"""Every masked time loop, for cells and decoders alike, through one entry point, `loop`.

    step(x_t, *state, *memory) -> [*new_state, *extra]

is one timestep: a cell's `recur`, or a decoder's step (decoder.py). `loop` runs it over a
padded batch as the fastest path that computes exactly the same values: the owner's own
kernel (the stock GRU's, kernels.py), else StepLoop, else `scan_loop`, the pytensor.scan
reference the others are tested against. A padded step carries the state through; extras
are per-step outputs that are not fed back (an attention's context and weights).

StepLoop takes the graph of one step, split by stepgraph.py into a forward and a backward
function, and runs it as one op (with StepLoopGrad for its gradient): a numpy loop calls the
forward function once per timestep, keeping what the backward one reads on a tape. Under
pytensor.scan a timestep of the benchmark model costs about 4.7 ms where its maths takes
1.5 (docs/performance.md). `memory` (an attention decoder's annotations, keys and source
mask) and the weights are the same at every step; the gradient of `memory` is summed over
the steps (or, where it is a matmul's operand, computed in one batched matmul after the
loop). There is no second copy of any equation: what the op computes is what `step`
computes, for any cell and any subclass that overrides `recur`.

A step that reads anything but its input, its state, its memory, shared variables and
constants (a random draw made inside it, a variable of an outer graph) cannot be compiled
on its own: `loop` then runs it under scan and says so once (SlowLoopWarning). Random
draws belong outside the loop, as inputs: zoneout's masks are drawn for the whole sequence
and read by the step as part of its input (cells.Recurrent.scan). In the NUMBA and JAX
modes every loop is a scan, which those backends compile themselves.
"""
import warnings

import numpy as np

import modes
import pytensor
import pytensor.tensor as pt
from pytensor.gradient import DisconnectedType
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op
from pytensor.graph.replace import graph_replace
from pytensor.link.c.type import Generic, generic

from stepgraph import FLOATX, StepGraph, UnsupportedStep, as_list, differentiable, stack_rows


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
        full = _unpadded(mask)
        for t in range(T):
            out = graph.forward(x[t], *prev)
            if t == 0:
                extras = [np.empty((T, *v.shape), v.dtype) for v in out[n:n_out]]
            for buf, v in zip(extras, out[n:n_out]):
                buf[t] = v
            tape.append(out[n_out:])
            m = mask[t][:, None]  # (B, 1)
            for k in range(n):
                if full[t]:
                    seqs[k][t] = out[k]
                    continue
                # s_t = s_{t-1} + m * (new - s_{t-1}): padding carries the state through
                np.subtract(out[k], prev[k], out=seqs[k][t])
                seqs[k][t] *= m
                seqs[k][t] += prev[k]
            prev = [s[t] for s in seqs]
        for k, value in enumerate(seqs + extras + [tape]):
            outputs[k][0] = value

    def _memory_grads(self, inputs):
        """Indices of the memory entries a gradient can reach (see differentiable)."""
        start = 2 + self.n_states
        return tuple(k for k in range(self.n_memory) if differentiable(inputs[start + k]))

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
        results = as_list(StepLoopGrad(self, memory_grads)(*inputs, *outputs[:n], outputs[-1], *grads))
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
        full = _unpadded(mask)
        for t in range(T - 1, -1, -1):
            m = mask[t][:, None]  # (B, 1)
            prev = [s[t - 1] if t > 0 else s0 for s, s0 in zip(seqs, init)]
            for k in range(n):
                d_state[k] += g_seqs[k][t]
                if not full[t]:
                    np.multiply(d_state[k], m, out=d_new[k])  # through the new state ...
                    d_state[k] -= d_new[k]  # ... and (1 - m) straight to the previous one
            # (with no padding at t, all of d_state goes through the new state: passed as it
            # is, then replaced by what reaches the previous state; no output views an input)
            d_through = d_state if full[t] else d_new
            out = backward(x[t], *prev, *tape[t], *d_through, *(g[t] for g in g_extra))
            for k in range(n):
                if full[t]:
                    np.copyto(d_state[k], out[k])
                else:
                    d_state[k] += out[k]
            dx[t] = out[n]
            for steps, g, same in zip(d_matmul, out[n + 1 : n + 1 + n_mm], graph.dot_is_x):
                if not same:
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
            stacked = [stack_rows(a) for a in A] + [stack_rows(dx if same else np.stack(steps[::-1]))
                                                    for steps, same in zip(d_matmul, graph.dot_is_x)]
            for acc, g in zip(d_weights + d_memory, after(*stacked, *weights, *memory)):
                acc += g
        for k, value in enumerate([dx, *d_state, *d_memory, *d_weights]):
            outputs[k][0] = value


def _unpadded(mask):
    """Per timestep of a (T, B) mask, whether no sequence is padded there (the loops then
    skip the masking arithmetic)."""
    return (mask.min(axis=1) == 1).tolist() if mask.size else [True] * mask.shape[0]


def step_loop(owner, step, n_states, x_proj, mask, init, memory=(), n_extra=0, mode=modes.DEFAULT_MODE,
              key=None, weights=None):
    """The masked loop of `step(x_t, *state, *memory) -> [*new_state, *extra]` over x_proj
    (T, B, P) with `mask` (T, B), from the initial state list `init`, as one StepLoop: a list
    of n_states state sequences (T, B, ...) and n_extra extra sequences. Raises
    UnsupportedStep (saying why) when the step cannot be compiled on its own (see the module
    docstring). `owner` is the module whose `params` the step reads; the op and its compiled
    step are built once per owner, step (or `key`, for a step made anew at each call),
    compile mode and memory types, and kept on the owner. `weights` maps some of the owner's
    params to what the step reads in their place for this loop (weight-drop's U * mask):
    they are inputs of the op."""
    memory = [pt.as_tensor_variable(v) for v in memory]
    key = (mode, key or getattr(step, "__func__", step), tuple(v.type for v in memory))
    ops = owner.__dict__.setdefault("_step_loops", {})
    if key not in ops:
        try:
            ops[key] = StepLoop(owner, step, n_states, [v.type for v in memory], modes.compile_mode(mode), n_extra)
        except UnsupportedStep as err:
            ops[key] = err
    op = ops[key]
    if isinstance(op, UnsupportedStep):
        raise op
    weights = weights or {}
    shared = [weights.get(w, w) for w in op.graph.shared]
    return as_list(op(x_proj, mask, *init, *memory, *shared))[: n_states + n_extra]


class SlowLoopWarning(UserWarning):
    """A module's loop runs under pytensor.scan, not on the fast loop (said once per module
    and reason)."""


def loop(owner, step, n_states, x_proj, mask, init, memory=(), n_extra=0, mode=None, weights=None, key=None,
         extra_shapes=None):
    """The one entry point of every masked time loop, for cells and decoders alike:

        step(x_t, *state, *memory) -> [*new_state, *extra]

    run over x_proj (T, B, P) with `mask` (T, B) from the state list `init`; returns the
    n_states state sequences (T, B, ...) and the n_extra extra sequences (T, ...). It runs

    1. `owner.kernel(x_proj, mask, init, weights)` when the owner has a hand-written loop for
       this step (the stock GRU: gru_kernel.GRUSequence) and it accepts the call;
    2. else StepLoop, derived from `step`'s own graph;
    3. else `scan_loop`, the reference: always under `owner.fast_loop = False` and in the
       NUMBA and JAX modes (which compile scan themselves); otherwise it warns once
       (SlowLoopWarning), naming the module and why its step cannot run alone.

    `mode` is a name in modes.MODES; None is what `pytensor.function` would use by
    default. `weights` maps params to what the step reads in their place (weight-drop);
    `key` names a step made anew at each call; `extra_shapes` gives each extra sequence's
    shape for scan, where it is not inferred (JAX needs it)."""
    mode = mode or modes.default_mode_name()
    weights = weights or {}
    if getattr(owner, "fast_loop", True) and modes.fast_loops(mode):
        kernel = getattr(owner, "kernel", None)
        out = kernel(step, x_proj, mask, init, weights) if kernel is not None and not memory else None
        if out is not None:
            return out
        try:
            return step_loop(owner, step, n_states, x_proj, mask, init, memory, n_extra, mode, key, weights)
        except UnsupportedStep as err:
            warnings.warn(f"{owner.name} runs under pytensor.scan, at about half the speed of the fast loop: {err}",
                          SlowLoopWarning, stacklevel=3)
    return scan_loop(owner, step, n_states, x_proj, mask, init, memory, n_extra, mode, weights, extra_shapes)


def scan_loop(owner, step, n_states, x_proj, mask, init, memory=(), n_extra=0, mode=None, weights=None,
              extra_shapes=None):
    """The same loop under pytensor.scan: the reference every fast path is tested against.
    A padded step carries the state through; extras are not masked."""
    mode = mode or modes.default_mode_name()
    n, weights = n_states, weights or {}
    replaced = list(weights)

    # scan's order: sequences (x_t, m_t), the previous state, non-sequences (the memory, then
    # what `weights` puts in place of some params: scan passes those very variables, and
    # graph_replace keeps them, so that scan takes them as inputs it differentiates).
    def masked_step(x_t, m_t, *args):
        prev, mem, stand_ins = args[:n], args[n : len(args) - len(replaced)], args[len(args) - len(replaced) :]
        out = as_list(step(x_t, *prev, *mem))
        out = graph_replace(out, dict(zip(replaced, stand_ins))) if replaced else out
        m = m_t[:, None]  # (B, 1)
        return [*(m * s + (1.0 - m) * p for s, p in zip(out[:n], prev)), *out[n:]]

    out = pytensor.scan(masked_step, sequences=[x_proj, mask], outputs_info=[*init, *([None] * n_extra)],
                        non_sequences=[*memory, *(weights[p] for p in replaced)], name=f"{owner.name}.scan",
                        return_updates=False, mode=modes.compile_mode(mode), return_list=True)
    # Scan does not infer the shapes of per-step outputs; under JAX every shape must be known
    # when the graph is compiled (compiled.StaticShapeFunction).
    if extra_shapes:
        out = [*out[:n], *(pt.specify_shape(o, s) for o, s in zip(out[n:], extra_shapes))]
    return out
