"""The regularisers: each acts in training only (evaluation, decoding and beam search are
deterministic and equal a model without it), locked dropout keeps one mask per sequence,
weight-drop reaches the fused loops, tying shares the table, label smoothing is the
cross-entropy against the smoothed target, and bad settings are one-line errors."""
import numpy as np
import pytest

import backend  # noqa: F401  (float32, before pytensor)
import kernels
import layers
import pytensor
import pytensor.tensor as pt
from configurator import ConfigError
from decode import beam_search
from model import Model, ModelConfig
from test_cells import batch, tiny_config
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
    nll, loss = kernels.smoothed_cross_entropy(X, Y, 0.2)
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
        getattr(module, "cell", module).fused = False
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
                                            ("label_smoothing", -0.2)])
def test_out_of_range_rates_are_one_line_errors(setting, value):
    with pytest.raises(ConfigError, match=rf"^{setting}={value}: must be in \[0, 1\)$"):
        check(TrainConfig(), tiny_config(**{setting: value}))


def test_untieable_shapes_name_both():
    with pytest.raises(ConfigError, match=r"tie_embeddings: the readout is 10 wide but the target word vectors are 6"):
        WideReadout(tiny_config(tie_embeddings=True))
    with pytest.raises(ConfigError, match="patience=-1: must not be negative"):
        check(TrainConfig(patience=-1), tiny_config())
    assert isinstance(ModelConfig().label_smoothing, float)
