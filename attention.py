"""Attention: additive (Bahdanau) and multiplicative (Luong) scores, and the decoder wrapper
that lets any cell of layers.py read an attention context. Registered by name in ATTENTIONS
(ModelConfig.attention, --attention).
"""
import numpy as np

import backend
import pytensor
import pytensor.tensor as pt
import recurrence
from layers import Module, _glorot, _uniform
from pytensor.graph.replace import graph_replace


def masked_softmax(scores, mask):
    """Softmax over axis 0 (source positions) where mask is 1; exactly 0 where it is 0.

    scores, mask: (Ts, B). A column with no real position gets all zeros, not NaN.
    """
    real = pt.gt(mask, 0)
    top = pt.max(pt.where(real, scores, np.float32(-1e30)), axis=0, keepdims=True)  # (1, B)
    weights = pt.exp(pt.where(real, scores - top, np.float32(-80.0))) * mask  # (Ts, B)
    return weights / pt.maximum(pt.sum(weights, axis=0, keepdims=True), np.float32(1e-30))


def batched_vector_matrix(rows, matrices):
    """rows (B, k), matrices (B, k, n) -> (B, n): rows[b] @ matrices[b], as one batched
    matmul with the matrices on the right. Where the matrices are the encoder's memory, the
    attention decoder's loop lays them out once, and their gradient is one batched matmul
    after the loop (recurrence.py) instead of a (Ts, B, C) product at every step."""
    return pt.matmul(rows[:, None, :], matrices)[:, 0, :]  # (B, 1, k) @ (B, k, n)


class Attention(Module):
    """Additive attention of Bahdanau et al. 2015 (arXiv:1409.0473, appendix A.1.2):

        e_tj  = v . tanh(s_{t-1} W_a + h_j U_a + b_a)     s: decoder state, h_j: annotation j
        a_tj  = softmax_j(e_tj) over real source positions (padding gets exactly 0)
        ctx_t = sum_j a_tj h_j

    `keys(annotations)` computes h_j U_a + b_a once per batch, outside the decoder's scan.
    Calling the module gives (ctx (B, C), weights (Ts, B)).
    """

    has_keys = True  # keys differ from the annotations, so the model keeps both

    def __init__(self, querySize, contextSize, attentionSize, name="attention", rng=None):
        super().__init__(name)
        rng = rng or np.random.default_rng(0)
        self.W = self.add_param("W", _glorot(rng, querySize, attentionSize))
        self.U = self.add_param("U", _glorot(rng, contextSize, attentionSize))
        self.b = self.add_param("b", np.zeros(attentionSize))
        self.v = self.add_param("v", _uniform(rng, (attentionSize,), np.sqrt(3.0 / attentionSize)))

    def keys(self, annotations):
        return pt.dot(annotations, self.U) + self.b  # (Ts, B, A)

    def scores(self, query, keys):
        return pt.dot(pt.tanh(keys + pt.dot(query, self.W)[None]), self.v)  # (Ts, B)

    def __call__(self, query, keys, annotations, src_mask):
        """query (B, Hq), keys (Ts, B, A), annotations (Ts, B, C), src_mask (Ts, B)."""
        weights = masked_softmax(self.scores(query, keys), src_mask)  # (Ts, B)
        ctx = batched_vector_matrix(weights.T, annotations.dimshuffle(1, 0, 2))  # (B, Ts) @ (B, Ts, C)
        return ctx, weights  # (B, C), (Ts, B)


class LuongAttention(Attention):
    """Multiplicative ("general") attention of Luong et al. 2015: e_tj = (s_{t-1} W_a) . h_j.
    Same interface as `Attention`; the keys are the annotations themselves."""

    has_keys = False

    def __init__(self, querySize, contextSize, attentionSize=None, name="attention", rng=None):
        Module.__init__(self, name)
        rng = rng or np.random.default_rng(0)
        self.W = self.add_param("W", _glorot(rng, querySize, contextSize))

    def keys(self, annotations):
        return annotations  # (Ts, B, C)

    def scores(self, query, keys):
        return batched_vector_matrix(pt.dot(query, self.W), keys.dimshuffle(1, 2, 0)).T  # (B, C) @ (B, C, Ts) -> (Ts, B)


ATTENTIONS = {"bahdanau": Attention, "luong": LuongAttention}


class AttentionDecoder(Module):
    """Any cell made to read an attention context (Bahdanau et al. 2015, appendix A.2.2):

        ctx_t   = attention(h_{t-1}, annotations)          h: the cell's first state
        state_t = cell.recur(x_t W + ctx_t W_c + b, state_{t-1})

    The cell keeps its own `recur` and state ([h, c] for the LSTM); the context enters its
    input projection through W_c (C, n_gates * H). `project(x)` is the part computed for
    every timestep outside the loop; `attend(x_proj_t, *state, keys, annotations, src_mask)`
    is one step and returns (new state list, ctx_t, weights_t); `scan` runs the whole masked
    loop, as one op derived from `attend` (recurrence.py) unless the cell has `fused=False`.
    The cell and the attention module are children: their params are this module's, named
    `<cell>.W`, `<cell>.Wc`, ...
    """

    def __init__(self, cell, contextSize, attention, rng=None):
        super().__init__(cell.name)
        rng = rng or np.random.default_rng(0)
        self.cell, self.attention = cell, attention
        self.params = list(cell.params)
        blocks = [_glorot(rng, contextSize, cell.hiddenSize) for _ in range(cell.n_gates)]
        self.Wc = self.add_param("Wc", np.hstack(blocks))
        self.params += attention.params
        self.n_states, self.hiddenSize = cell.n_states, cell.hiddenSize

    def project(self, x):
        return self.cell.project(x)

    def initial_state(self, h0):
        return self.cell.initial_state(h0)

    # attend(x_proj_t, *state, keys, annotations, src_mask): the order scan passes them in
    # when x_proj is a sequence, the state the previous outputs and the rest non-sequences.
    def attend(self, x_t, *args):
        state, (keys, annotations, src_mask) = list(args[: self.n_states]), args[self.n_states :]
        ctx, weights = self.attention(state[0], keys, annotations, src_mask)
        new = self.cell.recur(x_t + pt.dot(ctx, self.Wc), *state)
        return (list(new) if isinstance(new, (list, tuple)) else [new]), ctx, weights

    # attend_step(x_proj_t, *state, keys, annotations, src_mask): attend as one flat list,
    # [*new state, ctx_t, weights_t], the form recurrence.step_loop and scan take.
    def attend_step(self, x_t, *args):
        new, ctx, weights = self.attend(x_t, *args)
        return [*new, ctx, weights]

    def scan(self, x_proj, mask, init, memory, mode=backend.DEFAULT_MODE, weights=None):
        """Teacher-forced loop over x_proj (T, B, G*H) with `mask` (T, B), from the state list
        `init`, reading `memory` = [keys, annotations, src_mask]. Returns (state sequences,
        each (T, B, H_k); contexts (T, B, C); attention weights (T, Ts, B)). A padded step
        carries the state through; its context and weights are computed all the same.
        `weights` maps params to what the step reads in their place (weight-drop)."""
        n = self.n_states
        unique = list(dict.fromkeys(memory))  # Luong's keys are the annotations themselves
        positions = [unique.index(v) for v in memory]

        def step(x_t, *args):  # one variable per distinct memory entry, as the loop passes them
            prev, mem = args[:n], args[n:]
            return self.attend_step(x_t, *prev, *(mem[i] for i in positions))

        out = None
        if self.cell.fused:
            out = recurrence.step_loop(self, step, n, x_proj, mask, init, unique, n_extra=2, mode=mode,
                                       key=("attend_step", tuple(positions)), weights=weights)
        if out is None:
            out = self._scan(step, x_proj, mask, init, unique, mode, weights or {})
        return out[:n], out[n], out[n + 1]

    def _scan(self, step, x_proj, mask, init, memory, mode, weights):
        """The same loop under pytensor.scan: the reference the fused loop is tested against."""
        n, replaced = self.n_states, list(weights)

        # scan's order: sequences (x_proj_t, m_t), the previous state, non-sequences (memory,
        # then what `weights` puts in place of some params, so that scan differentiates it).
        def masked_step(x_t, m_t, *args):
            stand_ins = args[len(args) - len(replaced):]
            out = step(x_t, *args[: len(args) - len(replaced)])
            out = graph_replace(out, dict(zip(replaced, stand_ins))) if replaced else out
            m = m_t[:, None]  # (B, 1)
            return [*(m * s + (1.0 - m) * p for s, p in zip(out[:n], args[:n])), *out[n:]]

        out = pytensor.scan(masked_step, sequences=[x_proj, mask], outputs_info=[*init, None, None],
                            non_sequences=[*memory, *(weights[p] for p in replaced)], name=f"{self.name}.scan",
                            return_updates=False, mode=backend.compile_mode(mode), return_list=True)
        # Scan does not infer the shapes of the per-step outputs; under JAX every shape must
        # be known when the graph is compiled (backend.StaticShapeFunction).
        T, B, (Ts, _, C) = x_proj.shape[0], x_proj.shape[1], memory[-2].shape
        return [*out[:n], pt.specify_shape(out[n], (T, B, C)), pt.specify_shape(out[n + 1], (T, Ts, B))]
