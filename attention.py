"""Attention modules: additive (Bahdanau), multiplicative (Luong) and coverage (Tu), named
in ATTENTIONS for ModelConfig.attention (--attention=coverage, or module:Class for one of
your own). decoder.AttentionDecoder reads them.

The contract every attention module meets (check_attention tests a class against it):

    keys(annotations)                      -> keys: what the scores read, computed once per
                                              batch outside the loop (or the annotations)
    initial_state(annotations, src_mask)   -> a list of n_states tensors, each (B, ...)
    __call__(query, keys, annotations, src_mask, *state)
                                           -> (ctx (B, C), weights (Ts, B), *new_state)

query (B, H) is the decoder's state before the step, annotations (Ts, B, C) and src_mask
(Ts, B) the encoder's memory. `n_states` (0 unless set) is the length of the state list,
which the decoder carries from step to step like its own state (padding carries it
through); `has_keys = False` says the keys are the annotations themselves. All tensors
are float32.
"""
import numpy as np

from flags import FLOATX
import modes
import pytensor
import pytensor.tensor as pt
from module import Module, glorot, named_class, uniform


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
    Calling the module gives (ctx (B, C), weights (Ts, B)). It has no state.
    """

    has_keys = True  # keys differ from the annotations, so the model keeps both
    n_states = 0

    def __init__(self, querySize, contextSize, attentionSize, name="attention", rng=None):
        super().__init__(name)
        rng = rng or np.random.default_rng(0)
        self.W = self.add_param("W", glorot(rng, querySize, attentionSize))
        self.U = self.add_param("U", glorot(rng, contextSize, attentionSize))
        self.b = self.add_param("b", np.zeros(attentionSize))
        self.v = self.add_param("v", uniform(rng, (attentionSize,), np.sqrt(3.0 / attentionSize)))

    def keys(self, annotations):
        return pt.dot(annotations, self.U) + self.b  # (Ts, B, A)

    def initial_state(self, annotations, src_mask):
        return []

    def scores(self, query, keys):
        return pt.dot(pt.tanh(keys + pt.dot(query, self.W)[None]), self.v)  # (Ts, B)

    def __call__(self, query, keys, annotations, src_mask):
        """query (B, Hq), keys (Ts, B, A), annotations (Ts, B, C), src_mask (Ts, B)."""
        weights = masked_softmax(self.scores(query, keys), src_mask)  # (Ts, B)
        return context(weights, annotations), weights  # (B, C), (Ts, B)


def context(weights, annotations):
    """The attention context sum_j a_j h_j: weights (Ts, B), annotations (Ts, B, C) -> (B, C)."""
    return batched_vector_matrix(weights.T, annotations.dimshuffle(1, 0, 2))  # (B, Ts) @ (B, Ts, C)


class LuongAttention(Attention):
    """Multiplicative ("general") attention of Luong et al. 2015: e_tj = (s_{t-1} W_a) . h_j.
    Same interface as `Attention`; the keys are the annotations themselves."""

    has_keys = False

    def __init__(self, querySize, contextSize, attentionSize=None, name="attention", rng=None):
        Module.__init__(self, name)
        rng = rng or np.random.default_rng(0)
        self.W = self.add_param("W", glorot(rng, querySize, contextSize))

    def keys(self, annotations):
        return annotations  # (Ts, B, C)

    def scores(self, query, keys):
        return batched_vector_matrix(pt.dot(query, self.W), keys.dimshuffle(1, 2, 0)).T  # (B, C) @ (B, C, Ts) -> (Ts, B)


class CoverageAttention(Attention):
    """Additive attention with coverage (Tu et al. 2016, arXiv:1601.04811, the simple
    linguistic coverage): the sum of the weights each source position got so far is a
    feature of its score, so the decoder can tell what it has already translated.

        e_tj    = v . tanh(s_{t-1} W_a + h_j U_a + b_a + cov_{t-1,j} w_c)
        a_tj    = softmax_j(e_tj) over real source positions
        cov_t,j = cov_{t-1,j} + a_tj                      cov_0 = 0; the state, (B, Ts)
    """

    n_states = 1

    def __init__(self, querySize, contextSize, attentionSize, name="attention", rng=None):
        super().__init__(querySize, contextSize, attentionSize, name, rng)
        rng = rng or np.random.default_rng(1)
        self.w_cov = self.add_param("w_cov", uniform(rng, (attentionSize,), np.sqrt(3.0 / attentionSize)))

    def initial_state(self, annotations, src_mask):
        return [pt.zeros_like(src_mask.T)]  # (B, Ts): nothing attended yet

    def __call__(self, query, keys, annotations, src_mask, coverage):
        # cov_j w_c elementwise: it joins the tanh's generated loop, and its gradients' sums
        # over (Ts, B) and over A are BLAS products with ones (thunks.py)
        features = keys + pt.dot(query, self.W)[None] + coverage.T[:, :, None] * self.w_cov
        weights = masked_softmax(pt.dot(pt.tanh(features), self.v), src_mask)  # (Ts, B)
        return context(weights, annotations), weights, coverage + weights.T


ATTENTIONS = {"bahdanau": Attention, "luong": LuongAttention, "coverage": CoverageAttention}


def attention_class(name):
    """The attention class for `name`: a name in ATTENTIONS, or `module:Class` for one in a
    file of your own (module.named_class)."""
    return named_class(name, ATTENTIONS, Attention, "attention")


def check_attention(cls, query_size=4, context_size=5, attention_size=3, batch_size=2, src_len=3):
    """ValueError in one line, naming the class, unless a small `cls` builds and meets the
    contract above on a batch of 2: ctx (B, C), weights (Ts, B) and n_states new states of
    the initial states' shapes, all float32."""
    name = cls.__name__
    B, Ts, Hq, C = batch_size, src_len, query_size, context_size
    try:
        att = cls(Hq, C, attention_size, name="check", rng=np.random.default_rng(0))
        query, annotations, src_mask = pt.matrix("query"), pt.tensor3("annotations"), pt.matrix("src_mask")
        init = list(att.initial_state(annotations, src_mask))
        out = att(query, att.keys(annotations), annotations, src_mask, *init)
    except Exception as err:
        raise ValueError(f"{name}: building it and calling it failed: {type(err).__name__}: {err}") from None
    out = list(out) if isinstance(out, (list, tuple)) else [out]
    n = getattr(att, "n_states", 0)
    if len(init) != n or len(out) != 2 + n:
        raise ValueError(f"{name}: n_states is {n}, but initial_state gave {len(init)} state(s) and __call__ "
                         f"returned {len(out)} outputs; expected (ctx, weights, *new_state): {2 + n}")
    rng = np.random.default_rng(0)
    values = [rng.standard_normal((B, Hq)), rng.standard_normal((Ts, B, C)), np.ones((Ts, B))]
    values = [v.astype(FLOATX) for v in values]
    try:
        f = pytensor.function([query, annotations, src_mask], [*init, *out], on_unused_input="ignore",
                              mode=modes.compile_mode("FAST_COMPILE"))
        got = f(*values)
    except Exception as err:
        raise ValueError(f"{name}: calling it on a batch of {B} (query ({B}, {Hq}), annotations ({Ts}, {B}, {C}), "
                         f"src_mask ({Ts}, {B})) failed: {type(err).__name__}: {str(err).splitlines()[0]}") from None
    init_values, (ctx, weights, *states) = got[:n], got[n:]
    expected = [("ctx", ctx, (B, C)), ("weights", weights, (Ts, B))]
    expected += [(f"state {k}", s, s0.shape) for k, (s, s0) in enumerate(zip(states, init_values))]
    for what, value, shape in expected:
        if value.shape != shape:
            raise ValueError(f"{name} returned {what} of shape {value.shape}; expected {shape} for a batch of {B}, "
                             f"{Ts} source positions, annotations {C} wide")
    for what, var in zip(["ctx", "weights", *(f"state {k}" for k in range(n))], out):
        if var.type.dtype != FLOATX:
            raise ValueError(f"{name} returned a {var.type.dtype} {what}; expected {FLOATX} (a float64 constant or "
                             "shared variable upcasts it: use np.float32)")
