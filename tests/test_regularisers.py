"""The regularisers: each acts in training only (evaluation, decoding and beam search are
deterministic and equal a model without it), locked dropout keeps one mask per sequence,
weight-drop and zoneout run on the fast loops, tying shares the table, label smoothing is
the cross-entropy against the smoothed target, and bad settings are one-line errors."""
import numpy as np
import pytest

import cells
import modes
import softmax_kernel
import layers
import pytensor
import pytensor.tensor as pt
from configurator import ConfigError
from decode import beam_search
from model import Model, ModelConfig
from helpers import batch, tiny_config
from train import TrainConfig, check

ALL = dict(embed_dropout=0.3, rnn_dropout=0.3, weight_drop=0.3, word_dropout=0.2, readout_dropout=0.3,
           tie_embeddings=True, label_smoothing=0.1)


@pytest.fixture(scope="module")
def models():
    """(regularised, plain) attention LSTM models with the same weights."""
    config = dict(cell="lstm", attention="bahdanau", bidirectional=True)
    regularised = Model(tiny_config(**config, **ALL))
    plain = Model(tiny_config(**config, tie_embeddings=True))
    for p, q in zip(regularised.params, plain.params):
        q.set_value(p.get_value())
    return regularised, plain


def test_regularisers_act_in_training_only(models):
    regularised, plain = models
    src, tgt = batch(0)
    ev = regularised.compile_eval()
    assert float(ev(src, tgt)[0]) == float(ev(src, tgt)[0]) == pytest.approx(float(plain.compile_eval()(src, tgt)[0]))
    np.testing.assert_array_equal(regularised.decode(src, max_len=6)[0], plain.decode(src, max_len=6)[0])
    assert beam_search(regularised, src, beam_size=2, max_len=6)[0] == beam_search(plain, src, beam_size=2, max_len=6)[0]
    train = regularised.compile_train("sgd", 0.0)
    losses = [float(train(src, tgt, np.float32(0.0))[0]) for _ in range(3)]  # lr 0: the same weights
    assert len(set(losses)) == 3  # fresh masks every step


def test_training_reports_the_plain_cross_entropy(models):
    """With every dropout off, a training step's loss equals evaluation's, although label
    smoothing shapes the gradient."""
    regularised, _ = models
    smoothed_only = Model(tiny_config(cell="lstm", attention="bahdanau", bidirectional=True, tie_embeddings=True,
                                      label_smoothing=0.1))
    for p, q in zip(regularised.params, smoothed_only.params):
        q.set_value(p.get_value())
    src, tgt = batch(1)
    nll, n = smoothed_only.compile_eval()(src, tgt)
    loss = smoothed_only.compile_train("sgd", 0.0)(src, tgt, np.float32(0.0))[0]
    assert float(loss) == pytest.approx(float(nll) / float(n), rel=1e-5)


def test_label_smoothing_is_the_cross_entropy_against_the_smoothed_target():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 7)).astype("float32")
    y = rng.integers(0, 7, 5).astype("int32")
    X, Y = pt.matrix("x"), pt.ivector("y")
    nll, loss = softmax_kernel.smoothed_cross_entropy(X, Y, 0.2)
    got_nll, got_loss, grad = pytensor.function([X, Y], [nll, loss, pytensor.grad(loss.sum(), X)])(x, y)
    logp = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
    target = np.full((5, 7), 0.2 / 7)
    target[np.arange(5), y] += 0.8
    np.testing.assert_allclose(got_nll, -logp[np.arange(5), y], rtol=1e-5)
    np.testing.assert_allclose(got_loss, -(target * logp).sum(axis=1), rtol=1e-5)
    np.testing.assert_allclose(grad, np.exp(logp) - target, rtol=1e-4, atol=1e-6)


def test_locked_dropout_keeps_one_mask_per_sequence():
    drop = layers.Dropout(0)
    x = pt.tensor3("x")
    f = pytensor.function([x], drop.locked(x, 0.5), updates=drop.updates())
    out = f(np.ones((6, 4, 5), "float32"))
    assert np.all(out == out[0]) and set(np.unique(out)) == {0.0, 2.0}  # the same mask at every step


def test_weight_drop_reaches_every_fused_loop():
    """Weight-drop runs inside the fast loops (no scan), and with the same weights and
    masks it gives the same loss as under scan."""
    config = tiny_config(cell="lstm", attention="bahdanau", bidirectional=True, weight_drop=0.5)
    fast = Model(config)
    step = fast.compile_train("sgd", 0.0)
    names = {type(node.op).__name__ for node in step.maker.fgraph.apply_nodes}
    assert "StepLoop" in names and "Scan" not in names
    slow = Model(config)
    for module in slow.modules.values():
        getattr(module, "cell", module).fast_loop = False
    src, tgt = batch(2)
    a = [float(step(src, tgt, np.float32(0.0))[0]) for _ in range(2)]
    b = [float(slow.compile_train("sgd", 0.0)(src, tgt, np.float32(0.0))[0]) for _ in range(2)]
    np.testing.assert_allclose(a, b, rtol=1e-5)  # the same generator seed draws the same masks


def test_tied_tables_are_one_parameter():
    model = Model(tiny_config(tie_embeddings=True, tie_src_tgt=True))
    names = [p.name for p in model.params]
    assert "ffout.W" not in names and "src_embed.W" not in names and names.count("tgt_embed.W") == 1
    assert model.modules["src_embed"].W is model.modules["tgt_embed"].W is model.modules["ffout"].embed.W


class WideReadout(Model):
    def initModules(self):
        modules = super().initModules()
        modules["readout"] = layers.FF([8, 6, 8], 10, "tanh", name="readout")
        return modules


@pytest.mark.parametrize("setting, value", [("embed_dropout", 1.0), ("rnn_dropout", -0.1), ("weight_drop", 1.5),
                                            ("word_dropout", 1.0), ("readout_dropout", 2.0),
                                            ("label_smoothing", -0.2), ("zoneout", 1.0)])
def test_out_of_range_rates_are_one_line_errors(setting, value):
    with pytest.raises(ConfigError, match=rf"^{setting}={value}: must be in \[0, 1\)$"):
        check(TrainConfig(), tiny_config(**{setting: value}))


def test_untieable_shapes_name_both():
    with pytest.raises(ConfigError, match=r"tie_embeddings: the readout is 10 wide but the target word vectors are 6"):
        WideReadout(tiny_config(tie_embeddings=True))
    with pytest.raises(ConfigError, match="patience=-1: must not be negative"):
        check(TrainConfig(patience=-1), tiny_config())
    assert isinstance(ModelConfig().label_smoothing, float)


def zoneout_functions(make, n_in):
    """(fast, scan) versions of f(x, mask, u, h0) -> [state sequences, d/d(x, h0, params)]
    for the loop `make(fast_loop)` builds, run with zoneout's update mask u."""
    fns = []
    for fast_loop in (True, False):
        owner, run = make(fast_loop)
        x, mask, u, h0 = pt.tensor3("x"), pt.matrix("mask"), pt.tensor3("u"), pt.matrix("h0")
        states = run(x, mask, u, h0)
        cost = sum((s * np.float32(k + 1)).sum() for k, s in enumerate(states))
        grads = pytensor.grad(cost, [x, h0, *owner.params])
        fns.append(pytensor.function([x, mask, u, h0], [*states, *grads], mode=modes.compile_mode("CVM")))
    return fns


def test_zoneout_on_the_fast_loop_equals_scan_and_its_equations():
    """Zoneout's update mask, drawn outside the loop, gives the same states and gradients
    on the fast loop as under scan, for a cell and for an attention decoder with coverage
    and input feeding; a mask of ones is no zoneout and a mask of zeros keeps the state."""
    import warnings

    import recurrence
    from attention import CoverageAttention
    from decoder import AttentionDecoder

    E, H, Ts, B, T = 3, 4, 3, 2, 5
    rng = np.random.default_rng(0)
    annotations = rng.standard_normal((Ts, B, 5)).astype("float32")

    def lstm(fast_loop):
        cell = cells.LSTM(E, H, name="zlstm", rng=np.random.default_rng(1), fast_loop=fast_loop)
        return cell, lambda x, mask, u, h0: cell.scan(cell.project(x), mask, init=cell.initial_state(h0), zoneout=u)

    def attention_decoder(fast_loop):
        r = np.random.default_rng(2)
        dec = AttentionDecoder(cells.GRU(E, H, name="zdec", rng=r, fast_loop=fast_loop), 5,
                               CoverageAttention(H, 5, 6, "zdec.attention", r), r, input_feeding=True)

        def run(x, mask, u, h0):
            memory = dec.prepare({"annotations": pt.constant(annotations), "src_mask": pt.ones((Ts, B))})
            memory = [memory[k] for k in dec.memory_names]
            return dec.scan(x, mask, dec.initial_state(h0, memory), memory, zoneout=u)[0]
        return dec, run

    mask = np.ones((T, B), "float32")
    mask[3:, 1] = 0
    x, h0 = rng.standard_normal((T, B, E)).astype("float32"), rng.standard_normal((B, H)).astype("float32")
    for make in (lstm, attention_decoder):
        with warnings.catch_warnings():
            warnings.simplefilter("error", recurrence.SlowLoopWarning)
            fast, scanned = zoneout_functions(make, E)
        ops = {type(node.op).__name__ for node in fast.maker.fgraph.apply_nodes}
        assert "StepLoop" in ops and "Scan" not in ops
        u = (rng.random((T, B, H)) < 0.7).astype("float32")
        for got, want in zip(fast(x, mask, u, h0), scanned(x, mask, u, h0)):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5)
        kept = fast(x, mask, np.zeros((T, B, H), "float32"), h0)[0]
        np.testing.assert_array_equal(kept, np.broadcast_to(h0, kept.shape))
    cell, run = lstm(True)
    xs, ms, us, hs = pt.tensor3(), pt.matrix(), pt.tensor3(), pt.matrix()
    with_ones = pytensor.function([xs, ms, us, hs], run(xs, ms, us, hs)[0])(x, mask, np.ones((T, B, H), "float32"), h0)
    without = pytensor.function([xs, ms, hs], cell.scan(cell.project(xs), ms, init=cell.initial_state(hs))[0])
    np.testing.assert_allclose(with_ones, without(x, mask, h0), rtol=1e-5, atol=1e-6)


def test_zoneout_in_a_model_draws_new_masks_and_decodes_with_its_expectation():
    """A model with zoneout trains on the fast loop with a new update mask every step;
    evaluation and decoding use its expectation, so greedy decoding's log-probabilities are
    the teacher-forced scores of its outputs."""
    from vocab import BOS_ID, PAD_ID

    model = Model(tiny_config(cell="lstm", attention="bahdanau", zoneout=0.4))
    train = model.compile_train("sgd", 0.0)
    names = {type(node.op).__name__ for node in train.maker.fgraph.apply_nodes}
    assert "StepLoop" in names and "Scan" not in names
    src, tgt = batch(3)
    rng_before = model.dropout.rng.get_value().bit_generator.state
    losses = [float(train(src, tgt, np.float32(0.0))[0]) for _ in range(2)]  # lr 0: the same weights
    assert model.dropout.rng.get_value().bit_generator.state != rng_before and losses[0] != losses[1]
    ev = model.compile_eval()
    assert float(ev(src, tgt)[0]) == float(ev(src, tgt)[0])
    ys, logps = model.decode(src, max_len=5)
    for b, row in enumerate(ys):
        ids = [int(w) for w in row if w != PAD_ID]
        tgt_b = np.array([BOS_ID, *ids], dtype="int32")[:, None]
        score, _ = ev(src[:, b : b + 1][: int((src[:, b] != PAD_ID).sum())], tgt_b)
        assert -float(score) == pytest.approx(float(logps[b]), abs=1e-3)
