"""decoder.py: the attention decoder's loop (recurrence.loop over AttentionDecoder.attend)
against pytensor.scan over the same step: values and every gradient, for every cell, every
attention kind (coverage's state included), input feeding and a user's own attention
module; input feeding against a numpy reference of its equations; which path each
configuration takes; a step that cannot run on the fast loop training under scan, said once; and Cho's
decoder and a decoder of the user's own in initModules()."""
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cells
import modes
import layers
import pytensor
import pytensor.tensor as pt
import recurrence
from attention import ATTENTIONS, Attention, masked_softmax
from decoder import AttentionDecoder, Decoder
from helpers import losses_of_training
from model import Model, ModelConfig
from helpers import HalfGRU, LeakyLSTM, UserMGU, batch, tiny_config

MODE = modes.compile_mode("CVM")
E, H, C, A = 3, 4, 5, 6


class ScaledDotAttention(Attention):
    """A user's attention module, built like the stock ones: a learned per-unit scale on the
    query, dot-product scores with the annotations, and a gate on the context."""

    has_keys = False

    def __init__(self, querySize, contextSize, attentionSize=None, name="attention", rng=None):
        layers.Module.__init__(self, name)
        rng = rng or np.random.default_rng(0)
        self.W = self.add_param("W", rng.normal(0, 0.5, (querySize, contextSize)))
        self.scale = self.add_param("scale", rng.uniform(0.5, 1.5, contextSize))

    def keys(self, annotations):
        return annotations

    def __call__(self, query, keys, annotations, src_mask):  # stateless: (ctx, weights)
        q = pt.dot(query, self.W) * self.scale  # (B, C)
        weights = masked_softmax(pt.sum(keys * q[None], axis=2), src_mask)  # (Ts, B)
        ctx = pt.sum(weights[:, :, None] * annotations, axis=0) * pt.sigmoid(q)  # (B, C)
        return ctx, weights


CELLS = {"gru": cells.GRU, "gru_reset_after": lambda *a, **k: cells.GRU(*a, reset_after=True, **k),
         "lstm": cells.LSTM, "mgu": UserMGU, "half_gru": HalfGRU, "leaky_lstm": LeakyLSTM}
KINDS = {**ATTENTIONS, "scaled_dot": ScaledDotAttention}
_FUNCTIONS = {}


def decoder(cell, kind, fast_loop, feeding=False):
    rng = np.random.default_rng(3)
    dec = AttentionDecoder(CELLS[cell](E, H, name="decoder", rng=rng, fast_loop=fast_loop), C,
                           KINDS[kind](H, C, A, "decoder.attention", rng), rng, input_feeding=feeding)
    for p in dec.params:  # biases and v too, so every term counts
        p.set_value(np.random.default_rng(1).normal(0, 0.5, p.get_value().shape).astype("float32"))
    return dec


def read(dec, annotations, src_mask):
    """The memory list dec.scan and dec.step read."""
    memory = dec.prepare({"annotations": annotations, "src_mask": src_mask})
    return [memory[name] for name in dec.memory_names]


def loop_functions(cell, kind, feeding=False):
    """(fast_loop, scan) versions of f(x, mask, h0, annotations, src_mask, w_h, w_ctx, w_att) ->
    [every state sequence, contexts, weights, then d/d(x, h0, annotations, every param)] of a
    cost that reads all three outputs and the last state (coverage, the fed vector), from
    the same weights."""
    key = (cell, kind, feeding)
    if key not in _FUNCTIONS:
        fns = []
        for fast_loop in (True, False):
            dec = decoder(cell, kind, fast_loop, feeding)
            x, mask, h0 = pt.tensor3("x"), pt.matrix("mask"), pt.matrix("h0")
            annotations, src_mask = pt.tensor3("annotations"), pt.matrix("src_mask")
            w_h, w_ctx, w_att = pt.tensor3("w_h"), pt.tensor3("w_ctx"), pt.tensor3("w_att")
            memory = read(dec, annotations, src_mask)
            states, ctx, weights = dec.scan(x, mask, dec.initial_state(h0, memory), memory)
            cost = (states[0] * w_h).sum() + (ctx * w_ctx).sum() + (weights * w_att).sum() + states[-1][-1].sum()
            grads = pytensor.grad(cost, [x, h0, annotations, *dec.params])
            fns.append(pytensor.function([x, mask, h0, annotations, src_mask, w_h, w_ctx, w_att],
                                         [*states, ctx, weights, *grads], mode=MODE))
        _FUNCTIONS[key] = fns
    return _FUNCTIONS[key]


COMBOS = [(cell, "bahdanau") for cell in CELLS] + [("gru", "luong"), ("lstm", "luong"), ("mgu", "scaled_dot"),
                                                   ("gru", "scaled_dot"), ("gru", "coverage"), ("lstm", "coverage")]
COMBOS = [(*combo, False) for combo in COMBOS] + [("gru", "bahdanau", True), ("lstm", "coverage", True),
                                                  ("mgu", "luong", True)]


@settings(max_examples=16, deadline=None)
@given(
    combo=st.sampled_from(COMBOS),
    tgt_lengths=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    src_lengths=st.data(),
    seed=st.integers(0, 2**16),
)
def test_fast_loop_attention_loop_equals_scan(combo, tgt_lengths, src_lengths, seed):
    """Every cell (both GRU conventions, the LSTM, a user's cell, subclasses that override
    recur), Bahdanau, Luong, coverage and a user's attention module, with and without input
    feeding; target and source lengths from 1, padded: the fast loop gives scan's states
    (coverage and the fed vector included), contexts, weights and gradients (inputs,
    initial state, annotations through the keys and directly, every parameter)."""
    B = len(tgt_lengths)
    sources = src_lengths.draw(st.lists(st.integers(1, 4), min_size=B, max_size=B))
    rng = np.random.default_rng(seed)
    T, Ts = max(tgt_lengths), max(sources)
    mask = (np.arange(T)[:, None] < np.array(tgt_lengths)[None]).astype("float32")  # (T, B)
    src_mask = (np.arange(Ts)[:, None] < np.array(sources)[None]).astype("float32")  # (Ts, B)
    f32 = lambda *shape: rng.standard_normal(shape).astype("float32")  # noqa: E731
    args = [f32(T, B, E), mask, f32(B, H), f32(Ts, B, C), src_mask, f32(T, B, H), f32(T, B, C), f32(T, Ts, B)]
    fast_loop, scanned = loop_functions(*combo)
    for got, want in zip(fast_loop(*args), scanned(*args)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=3e-5)


def ops_of(var):
    return {type(v.owner.op).__name__ for v in pytensor.graph.traversal.ancestors([var]) if v.owner}


def test_which_path_each_configuration_takes():
    """The attention decoder of every cell runs as one StepLoop; fast_loop=False runs
    scan without a word; a step that reads a shared variable the loop does not take runs
    under scan and says so, once, naming the module and the variable."""
    x, mask, annotations, src_mask = pt.tensor3("x"), pt.matrix("m"), pt.tensor3("a"), pt.matrix("sm")
    h0 = pt.matrix("h0")

    def states_of(dec):
        memory = read(dec, annotations, src_mask)
        return dec.scan(x, mask, dec.initial_state(h0, memory), memory)[0]

    with warnings.catch_warnings():
        warnings.simplefilter("error", recurrence.SlowLoopWarning)
        for cell, kind, feeding in COMBOS:
            states = states_of(decoder(cell, kind, True, feeding))
            assert "StepLoop" in ops_of(states[0]) and "Scan" not in ops_of(states[0]), (cell, kind, feeding)
        states = states_of(decoder("lstm", "bahdanau", fast_loop=False))
        assert "Scan" in ops_of(states[0]) and "StepLoop" not in ops_of(states[0])
    dec = TemperedModel(tiny_config(attention="bahdanau")).modules["decoder"]
    with pytest.warns(recurrence.SlowLoopWarning, match=r"decoder runs under pytensor.scan.*temperature"):
        states = states_of(dec)
    assert "Scan" in ops_of(states[0]) and "StepLoop" not in ops_of(states[0])


class TemperedAttention(Attention):
    """Bahdanau attention whose scores are divided by a float64 temperature that is not a
    parameter: the step reads a shared variable the fast loop does not take, so it must
    step aside to scan."""

    def scores(self, query, keys):
        return (super().scores(query, keys) / self.temperature).astype("float32")


class TemperedModel(Model):
    def initModules(self):
        modules = super().initModules()
        attention = modules["decoder"].attention
        attention.__class__ = TemperedAttention
        attention.temperature = pytensor.shared(np.float64(2.0), name="temperature")
        return modules


@pytest.mark.filterwarnings("ignore::recurrence.SlowLoopWarning")
def test_a_step_that_cannot_run_on_the_fast_loop_trains_under_scan():
    model = TemperedModel(tiny_config(attention="bahdanau", bidirectional=True))
    src, tgt = batch(4)
    step = model.compile_train("adam", 1.0)
    assert "StepLoop" not in {type(node.op).__name__ for node in step.maker.fgraph.apply_nodes}
    losses = [float(step(src, tgt, np.float32(0.05))[0]) for _ in range(15)]
    assert losses[-1] < losses[0] - 0.3


def test_model_loss_and_gradients_on_the_fast_loop_equal_scan():
    """A bidirectional LSTM attention model (both encoder directions and the decoder on
    fast loops): the teacher-forced loss and the gradient of every parameter are the same
    as through scan."""
    config = tiny_config(cell="lstm", attention="bahdanau", bidirectional=True)
    results = []
    for fast_loop in (True, False):
        model = Model(config)
        for module in model.modules.values():
            getattr(module, "cell", module).fast_loop = fast_loop
        src, tgt = pt.imatrix("src"), pt.imatrix("tgt")
        loss, _ = model.loss(src, tgt)
        f = pytensor.function([src, tgt], [loss, *pytensor.grad(loss, model.params)], mode=model.mode)
        results.append(f(*batch(5)))
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


# Golden values of the decoder run under pytensor.scan (the reference loop): greedy ids, their
# log-probabilities, beam-3 outputs and scores after 5 Adam steps.
RECORDED = {
    ("gru", "bahdanau"): ([[7, 10, 10, 10, 10, 10, 10], [9, 10, 5, 10, 5, 10, 5], [7, 10, 10, 10, 10, 10, 10],
                           [6, 5, 10, 5, 10, 5, 5]], [-8.6451, -9.0477, -10.7756, -10.0621],
                          [[7, 10, 10, 10, 10, 10, 10], [9, 10, 5, 10, 5, 10, 5], [6, 7, 10, 10, 10, 10, 10],
                           [6, 10, 5, 10, 5, 10, 5]], [-8.6451, -9.0477, -10.4161, -9.8865]),
    ("lstm", "luong"): ([[9, 5, 9, 5, 9, 5, 9], [9, 5, 9, 5, 9, 5, 9], [9, 5, 9, 5, 9, 5, 9], [6, 8, 5, 5, 11, 10, 5]],
                        [-9.4310, -9.5285, -9.4647, -10.4344],
                        [[7, 10, 5, 7, 10, 5, 9], [9, 5, 9, 5, 9, 5, 9], [7, 10, 5, 7, 10, 5, 9], [6, 8, 8, 8, 5, 5, 5]],
                        [-8.5846, -9.5285, -8.5681, -10.2527]),
}


@pytest.mark.parametrize("cell, kind", sorted(RECORDED))
def test_training_decoding_and_beam_unchanged_by_the_fast_loop(cell, kind):
    """A fixed small model trained 5 steps through the fast loop decodes (greedy and beam)
    exactly as the same model trained through scan did before the loop existed."""
    from decode import beam_search
    from vocab import BOS_ID

    V = 12
    model = Model(ModelConfig(embed_size=6, hidden_size=8, src_vocab_size=V, tgt_vocab_size=V, cell=cell,
                              attention=kind, bidirectional=True, init_seed=5))
    rng = np.random.default_rng(11)
    src = rng.integers(4, V, size=(5, 4)).astype("int32")
    src[3:, 1] = 0
    tgt = rng.integers(4, V, size=(6, 4)).astype("int32")
    tgt[0] = BOS_ID
    step = model.compile_train("adam", 1.0)
    for _ in range(5):
        step(src, tgt, np.float32(0.05))
    ys, logps = model.decode(src, max_len=7)
    outputs, scores = beam_search(model, src, beam_size=3, max_len=7)
    greedy_ids, greedy_logps, beam_ids, beam_scores = RECORDED[(cell, kind)]
    assert ys.tolist() == greedy_ids and outputs == beam_ids
    np.testing.assert_allclose(logps, greedy_logps, atol=2e-3)
    np.testing.assert_allclose(scores, beam_scores, atol=2e-3)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def test_coverage_and_input_feeding_step_match_numpy():
    """One step of a GRU decoder with coverage attention and input feeding against a numpy
    reference of the equations in decoder.py and attention.py: the new h, coverage and fed
    vector, the context and the weights, with a padded source position."""
    dec = decoder("gru", "coverage", fast_loop=True, feeding=True)
    att, cell, feed = dec.attention, dec.cell, dec.feed
    rng = np.random.default_rng(0)
    B, Ts = 3, 4
    emb, h, f = (rng.standard_normal((B, n)).astype("float32") for n in (E, H, H))
    cov = rng.uniform(0, 2, (B, Ts)).astype("float32")
    ann = rng.standard_normal((Ts, B, C)).astype("float32")
    src_mask = np.ones((Ts, B), "float32")
    src_mask[3:, 1] = 0
    e, hs, cs, fs, a, m = pt.matrix("e"), pt.matrix("h"), pt.matrix("cov"), pt.matrix("f"), pt.tensor3("a"), pt.matrix("m")
    memory = read(dec, a, m)
    new, ctx, weights = dec.step(e, [hs, cs, fs], memory)
    got = pytensor.function([e, hs, cs, fs, a, m], [*new, ctx, weights], mode=MODE)(emb, h, cov, f, ann, src_mask)

    v = lambda var: var.get_value()  # noqa: E731
    scores = np.tanh(ann @ v(att.U) + v(att.b) + (h @ v(att.W))[None] + cov.T[:, :, None] * v(att.w_cov)) @ v(att.v)
    scores = np.where(src_mask > 0, scores, -np.inf)
    w = np.exp(scores - scores.max(0)) / np.exp(scores - scores.max(0)).sum(0)  # (Ts, B)
    c = np.einsum("tb,tbc->bc", w, ann)
    x = emb @ v(cell.W) + v(cell.b) + c @ v(dec.Wc) + f @ v(dec.Wf)
    U = v(cell.U)
    zr = sigmoid(x[:, : 2 * H] + h @ U[:, : 2 * H])
    z, r = zr[:, :H], zr[:, H:]
    h_new = z * h + (1 - z) * np.tanh(x[:, 2 * H :] + (r * h) @ U[:, 2 * H :])
    f_new = np.tanh(np.concatenate([h_new, c], axis=1) @ v(feed.W) + v(feed.b))
    want = [h_new, cov + w.T, f_new, c, w]
    for k, (g, x_) in enumerate(zip(got, want)):
        np.testing.assert_allclose(g, x_, rtol=2e-5, atol=2e-6, err_msg=f"output {k}")
    assert got[-1][3, 1] == 0.0 and got[1][1, 3] == cov[1, 3]  # padding is never attended


@pytest.fixture(scope="module")
def coverage_model():
    """A bidirectional LSTM model with coverage and input feeding, trained a few steps."""
    model = Model(tiny_config(cell="lstm", attention="coverage", input_feeding=True, bidirectional=True))
    step = model.compile_train("adam", 1.0)
    src, tgt = batch(6)
    for _ in range(5):
        step(src, tgt, np.float32(0.05))
    return model


def test_coverage_and_input_feeding_decode_as_they_train(coverage_model):
    """Greedy decoding in one scan, step by step (with the state carried from Python) and
    as a beam of 1 give the same outputs, and each output's log-probability is its
    teacher-forced score: the states (coverage, the fed vector) carry through decoding as
    through training."""
    from decode import beam_search, step_decode
    from vocab import BOS_ID, EOS_ID, PAD_ID

    model = coverage_model
    src, _ = batch(7)
    ys, logps = model.decode(src, max_len=6)
    outputs = [[int(w) for w in row if w not in (PAD_ID, EOS_ID)] for row in ys]
    stepped, step_logps = step_decode(model, src, max_len=6, unk_penalty=1e9)
    beam, beam_logps = beam_search(model, src, beam_size=1, max_len=6)
    assert stepped == outputs and beam == outputs
    np.testing.assert_allclose(step_logps, logps, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(beam_logps, logps, rtol=1e-4, atol=1e-4)
    nll = model.compile_eval()
    for b, row in enumerate(ys):
        ids = [int(w) for w in row if w != PAD_ID]
        tgt = np.array([BOS_ID, *ids], dtype="int32")[:, None]
        score, _ = nll(src[:, b : b + 1][: int((src[:, b] != PAD_ID).sum())], tgt)
        assert -float(score) == pytest.approx(float(logps[b]), abs=1e-3)


class MeanContextDecoder(Decoder):
    """A user's decoder: Cho's decoder fed the mean of the annotations (over real source
    positions) instead of the encoder's last state. It reads other memory entries than c,
    so the model's encoding, teacher forcing and every decoder must ask it which."""

    memory_names = ("annotations", "src_mask")

    def _mean(self, memory):
        annotations, src_mask = memory
        return (annotations * src_mask[:, :, None]).sum(0) / pt.maximum(src_mask.sum(0), 1.0)[:, None]

    def step(self, emb_t, state, memory):
        return super().step(emb_t, state, [self._mean(memory)])

    def scan(self, emb, mask, init, memory, mode=None, weights=None, zoneout=None):
        return super().scan(emb, mask, init, [self._mean(memory)], mode, weights, zoneout)


class MeanContextModel(Model):
    def initModules(self):
        modules = super().initModules()
        E, H = self.config.embed_size, self.config.hidden_size
        modules["decoder"] = MeanContextDecoder(cells.GRU([E, H], H, name="decoder", rng=self.rng))
        return modules


def test_a_users_decoder_in_init_modules_alone_trains_decodes_and_round_trips(tmp_path):
    from decode import beam_search

    model = MeanContextModel(tiny_config())
    assert model.memory_names() == ("annotations", "src_mask") and not model.has_attention
    src, tgt = batch(8)
    losses, step = losses_of_training(model, src, tgt, lr=0.05)
    assert losses[-1] < losses[0] - 0.3
    ys, _ = model.decode(src, max_len=6)
    outputs, _ = beam_search(model, src, beam_size=1, max_len=6)
    from vocab import EOS_ID, PAD_ID
    assert outputs == [[int(w) for w in row if w not in (PAD_ID, EOS_ID)] for row in ys]
    assert "StepLoop" in {type(n.op).__name__ for n in step.maker.fgraph.apply_nodes} or \
        "GRUSequence" in {type(n.op).__name__ for n in step.maker.fgraph.apply_nodes}
    model.save(tmp_path / "m.npz")
    loaded = MeanContextModel.load(tmp_path / "m.npz")
    assert (loaded.decode(src, max_len=6)[0] == ys).all()


def test_a_bare_cell_in_the_decoder_slot_is_chos_decoder():
    class LSTMDecoderModel(Model):
        def initModules(self):
            modules = super().initModules()
            E, H = self.config.embed_size, self.config.hidden_size
            modules["decoder"] = cells.LSTM([E, H], H, name="decoder", rng=self.rng)
            return modules

    model = LSTMDecoderModel(tiny_config())
    dec = model.modules["decoder"]
    assert isinstance(dec, Decoder) and isinstance(dec.cell, cells.LSTM) and dec.params == dec.cell.params
    src, tgt = batch(9)
    loss, n = model.compile_eval()(src, tgt)
    assert np.isfinite(loss) and n > 0


class WideGRU(cells.GRU):
    """A broken cell: its new state is twice as wide as its state."""

    def recur(self, x_t, h_prev):
        return pt.concatenate([super().recur(x_t, h_prev), h_prev], axis=1)


class ForgetfulDecoder(AttentionDecoder):
    """A broken decoder: its step drops the attention's state."""

    def step(self, emb_t, state, memory):
        new, ctx, weights = super().step(emb_t, state, memory)
        return new[:-1], ctx, weights


class TransposedAttention(Attention):
    """A broken attention: weights (B, Ts) instead of (Ts, B)."""

    def __call__(self, query, keys, annotations, src_mask):
        ctx, weights = super().__call__(query, keys, annotations, src_mask)
        return ctx, weights.T


def test_a_users_broken_module_in_init_modules_is_one_line_at_construction():
    """Put in initModules() rather than named by a setting, a user's cell, decoder or
    attention is checked when the model is built: one line naming the slot, the class and
    what was expected, before anything is compiled."""
    from attention import CoverageAttention
    from configurator import ConfigError

    def model_with(slot, build):
        class Edited(Model):
            def initModules(self):
                modules = super().initModules()
                modules[slot] = build(self.config, self.rng)
                return modules
        return Edited

    wide = model_with("encoder", lambda cfg, rng: WideGRU(6, 8, name="encoder", rng=rng))
    with pytest.raises(ConfigError, match=r"^modules\['encoder'\]: WideGRU.recur returned states of shapes "
                                          r"\[\(2, 16\)\]; expected \[\(2, 8\)\]"):
        wide(tiny_config())
    forgetful = model_with("decoder", lambda cfg, rng: ForgetfulDecoder(
        cells.GRU(6, 8, name="decoder", rng=rng), 8, CoverageAttention(8, 8, 8, "decoder.attention", rng), rng))
    with pytest.raises(ConfigError, match=r"^modules\['decoder'\]: ForgetfulDecoder\(GRU, CoverageAttention\): a step "
                                          r"returned 1 state\(s\) from an initial state of 2$"):
        forgetful(tiny_config())
    transposed = model_with("decoder", lambda cfg, rng: AttentionDecoder(
        cells.GRU(6, 8, name="decoder", rng=rng), 8, TransposedAttention(8, 8, 8, "decoder.attention", rng), rng))
    with pytest.raises(ConfigError, match=r"^modules\['decoder'\]: AttentionDecoder\(GRU, TransposedAttention\): its "
                                          r"attention weights are \(2, 3\); expected \(3, 2\)"):
        transposed(tiny_config())
