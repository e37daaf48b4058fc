"""compiled.py and jax_kernels.py under --mode=JAX: the same graphs lowered to JAX compute what CVM computes.

Every cell (Cho's GRU, reset_after, the LSTM, a user's MGU written only as `recur`) in every
slot, every attention kind (coverage's state) with and without input feeding over a
bidirectional stacked encoder, weight-drop, zoneout: the loss and
every parameter's gradient under JAX equal CVM's to float32 tolerance, on a batch with
padding (which JAX pads further to bucket sizes). Greedy, sampled and beam outputs are the
same; checkpoints move between the modes both ways; recompilation is bounded by the buckets.
"""
import os
import sys

import numpy as np
import pytest

import cells
import compiled
import pytensor
import pytensor.tensor as pt
from decode import beam_search, generate
from helpers import ROOT, log_rows, run_command
from model import Model, ModelConfig
from vocab import BOS_ID, EOS_ID, PAD_ID

pytest.importorskip("jax", reason="pip install -r requirements-jax.txt")

V = 11
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))  # benchmarks/mgu.py: a user's own cell


def config(**kw):
    return ModelConfig(src_vocab_size=V, tgt_vocab_size=V, embed_size=6, hidden_size=8, **kw)


def batch(seed, B=4, Ts=5, Tt=6):
    rng = np.random.default_rng(seed)
    src = rng.integers(EOS_ID + 1, V, size=(Ts, B)).astype("int32")
    src[3:, 0] = PAD_ID
    tgt = rng.integers(EOS_ID + 1, V, size=(Tt, B)).astype("int32")
    tgt[0], tgt[4:, 1] = BOS_ID, PAD_ID
    tgt[3, 1] = EOS_ID
    return src, tgt


def loss_and_grads(model):
    """f(src, tgt) -> [loss, *d loss / d param], compiled in the model's mode."""
    src, tgt = pt.imatrix("src"), pt.imatrix("tgt")
    loss, _ = model.loss(src, tgt)
    return compiled.function([src, tgt], [loss, *pytensor.grad(loss, model.params)], model.mode, pad=True)


SETTINGS = {
    "gru": {},
    "gru_reset_after": {"reset_after": True},
    "lstm": {"cell": "lstm"},
    "mgu_bahdanau_bidirectional_stacked": {"cell": "mgu:MGU", "attention": "bahdanau", "bidirectional": True,
                                           "encoder_layers": 2},
    "lstm_luong": {"cell": "lstm", "attention": "luong"},
    "gru_bahdanau_tied": {"attention": "bahdanau", "tie_embeddings": True, "embed_init_std": 0.2},
    "gru_coverage_input_feeding": {"attention": "coverage", "input_feeding": True},
    "lstm_zoneout": {"cell": "lstm", "zoneout": 0.3},
}


@pytest.mark.parametrize("name", SETTINGS)
def test_loss_and_every_gradient_equal_cvm(name):
    src, tgt = batch(0)
    results = {}
    for mode in ("CVM", "JAX"):
        results[mode] = loss_and_grads(Model(config(**SETTINGS[name]), mode=mode))(src, tgt)
    cvm, jax = results["CVM"], results["JAX"]
    assert len(cvm) == len(jax) > 5
    for k, (a, b) in enumerate(zip(cvm, jax)):
        np.testing.assert_allclose(b, a, rtol=2e-4, atol=2e-5, err_msg=f"{name}: output {k}")


@pytest.fixture(scope="module")
def pair():
    """The same attention model (coverage, input feeding) under CVM and JAX, trained a few
    steps under CVM."""
    cfg = config(cell="lstm", attention="coverage", input_feeding=True, bidirectional=True)
    cvm, jax = Model(cfg, mode="CVM"), Model(cfg, mode="JAX")
    step = cvm.compile_train("adam", 1.0)
    src, tgt = batch(1)
    for _ in range(20):
        step(src, tgt, np.float32(0.03))
    for p, q in zip(cvm.params, jax.params):
        q.set_value(p.get_value())
    return cvm, jax


def test_greedy_sampled_and_beam_outputs_equal_cvm(pair):
    cvm, jax = pair
    src, _ = batch(2, B=3)
    for kwargs in ({}, {"temperature": 0.9}, {"temperature": 0.9, "top_k": 3}, {"beam_size": 3}):
        a = generate(cvm, src, max_len=7, rng=np.random.default_rng(5), **kwargs)
        b = generate(jax, src, max_len=7, rng=np.random.default_rng(5), **kwargs)
        assert a[0] == b[0], kwargs
        np.testing.assert_allclose(b[1], a[1], rtol=1e-4, atol=1e-4, err_msg=str(kwargs))
    nbest_a, scores_a = beam_search(cvm, src, beam_size=3, max_len=7, nbest=2)
    nbest_b, scores_b = beam_search(jax, src, beam_size=3, max_len=7, nbest=2)
    assert nbest_a == nbest_b


def test_recompilation_is_bounded_by_the_buckets(pair):
    """Batches of many lengths and sizes compile once per (length bucket, batch bucket)."""
    _, jax = pair
    f = jax.compile_eval()
    shapes, expected = [(5, 4, 6), (3, 4, 4), (7, 2, 8), (9, 4, 10), (11, 16, 12), (6, 3, 7), (13, 9, 14)], set()
    for i, (Ts, B, Tt) in enumerate(shapes):
        src, tgt = batch(i, B=B, Ts=Ts, Tt=Tt)
        total, n = f(src, tgt)
        assert n == np.sum(tgt[1:] != PAD_ID)  # padding to the bucket added no token
        expected.add((compiled.bucket(max(Ts, Tt)), compiled.bucket(B)))
    assert len(expected) < len(shapes)
    assert len(f.compiles) == len(expected) and len(f.functions) == len(expected)
    assert "JAX compilations" in compiled.compile_summary(jax.functions)
    assert compiled.compile_summary(Model(config()).functions) is None


def test_buckets():
    assert [compiled.bucket(n) for n in (1, 8, 9, 13, 100, 5000)] == [8, 8, 12, 16, 128, 5000]


def test_a_run_moves_between_modes_both_ways(tiny_reverse, tmp_path):
    """train.py under JAX, resumed under CVM, resumed under JAX again; each resume reads the
    other's checkpoint (weights, Adam state, dropout generator) and the val loss goes on."""
    out = tmp_path / "run"
    common = [sys.executable, "train.py", f"--dataset={tiny_reverse}", f"--out_dir={out}", "--eval_interval=10",
              "--num_samples=0", "--batch_size=16", "--embed_size=8", "--hidden_size=8", "--rnn_dropout=0.1"]
    first = run_command(common + ["--mode=JAX", "--max_iters=10"])
    assert "JAX compilations" in first.stdout and "JAX runs on cpu" in first.stdout  # the device is said
    run_command(common + ["--mode=CVM", "--init_from=resume", "--max_iters=20"])
    # Resumed without --mode, a run keeps its saved mode (CVM here) and says so.
    second = run_command([c for c in common if c != "--rnn_dropout=0.1"] + ["--init_from=resume", "--max_iters=20"])
    assert "compiling (CVM)" in second.stdout and "already stopped" in second.stdout
    third = run_command(common + ["--mode=JAX", "--init_from=resume", "--max_iters=30"])
    assert "compiling (JAX)" in third.stdout
    rows = log_rows(out)
    assert [r["step"] for r in rows] == [10, 20, 30]
    assert rows[-1]["val_loss"] < rows[0]["val_loss"]


@pytest.mark.parametrize("B", [1, 5])
def test_any_batch_size_decodes_as_under_cvm(pair, B):
    """One sentence, and a batch that is no bucket: greedy, sampled (top-p), beam search with
    n-best lists and the teacher-forced attention weights equal CVM's."""
    cvm, jax = pair
    src, tgt = batch(3, B=max(B, 2))
    src, tgt = src[:, :B], tgt[:, :B]
    for kwargs in ({}, {"temperature": 0.9, "top_p": 0.8}, {"beam_size": 3}):
        a = generate(cvm, src, max_len=7, rng=np.random.default_rng(5), **kwargs)
        b = generate(jax, src, max_len=7, rng=np.random.default_rng(5), **kwargs)
        assert a[0] == b[0], kwargs
        np.testing.assert_allclose(b[1], a[1], rtol=1e-4, atol=1e-4, err_msg=str(kwargs))
    assert beam_search(cvm, src, beam_size=3, max_len=7, nbest=2)[0] == beam_search(jax, src, beam_size=3, max_len=7,
                                                                                    nbest=2)[0]
    np.testing.assert_allclose(jax.compile_attention()(src, tgt), cvm.compile_attention()(src, tgt), rtol=1e-4,
                               atol=1e-5)
    rows = [fn(src, tgt) for fn in (cvm.compile_sentence_nll(), jax.compile_sentence_nll())]  # JAX pads the batch
    for got, want in zip(rows[1], rows[0]):
        np.testing.assert_allclose(got[:B], want, rtol=1e-4, atol=1e-4)


def test_autoencoder_under_jax_equals_cvm(tmp_path):
    """NDS2SAEFactory with mode = "JAX": the same validation loss, predictions and
    codes as under CVM from the same weights (keep_prob 1: no dropout draws to differ)."""
    sys.path.insert(0, os.path.join(ROOT, "data", "sincos"))
    from autoencoder import NDS2SAEFactory
    from sincos import make_generator, make_sequences

    encoders = {}
    for mode in ("CVM", "JAX"):
        factory = NDS2SAEFactory()
        factory.set_output(str(tmp_path / f"{mode}.zip"))
        factory.input_dim, factory.output_dim, factory.layer_sizes, factory.mode = 2, 1, [6, 5], mode
        encoders[mode] = factory.build()
    cvm, jax = encoders["CVM"], encoders["JAX"]
    cvm.train(make_generator(40, 0), make_generator(20, 1), n_iterations=3, batch_size=20, display_step=3)
    for p, q in zip(cvm.params, jax.params):
        q.set_value(p.get_value())
    gen = make_generator(20, 1)
    assert jax.evaluate(gen)["mse"] == pytest.approx(cvm.evaluate(gen)["mse"], rel=1e-4)
    test_in, test_out = make_sequences(3, seed=2)
    lengths = [len(s) for s in test_out]
    for a, b in zip(cvm.predict(test_in, lengths=lengths), jax.predict(test_in, lengths=lengths)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(jax.encode(test_in), cvm.encode(test_in), rtol=1e-4, atol=1e-5)
    one = test_in[:1]  # a single sequence: a batch of one
    for a, b in zip(cvm.predict(one, lengths=lengths[:1]), jax.predict(one, lengths=lengths[:1])):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(jax.encode(one), cvm.encode(one), rtol=1e-4, atol=1e-5)
    jax.train(make_generator(40, 0), make_generator(20, 1), n_iterations=2, batch_size=20, display_step=2)


class _Halve(pytensor.graph.op.Op):
    """An op of a user's own with a Python implementation only (no JAX version)."""

    __props__ = ()

    def make_node(self, x):
        x = pt.as_tensor_variable(x)
        return pytensor.graph.basic.Apply(self, [x], [x.type()])

    def perform(self, node, inputs, outputs):
        outputs[0][0] = inputs[0] / 2

    def infer_shape(self, fgraph, node, shapes):
        return shapes


def test_a_cell_with_an_op_jax_cannot_run_is_one_line():
    from configurator import ConfigError

    class HalvedGRU(cells.GRU):
        def recur(self, x_t, h_prev):
            return _Halve()(super().recur(x_t, h_prev))

    model = Model(config(), mode="JAX")
    model.modules["encoder"].__class__ = HalvedGRU
    src, tgt = batch(0)
    with pytest.raises(ConfigError) as err:
        model.compile_eval()(src, tgt)
    message = str(err.value)
    assert "_Halve" in message and "encoder.scan" in message and "--mode=CVM" in message
    assert len(message.splitlines()) == 1
