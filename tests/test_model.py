"""The encoder-decoder on a tiny configuration: loss, masking, gradients, decoding,
checkpoints and swapping cells. Compiled functions are shared within this module."""
import json
import warnings
import zipfile

import numpy as np
import pytest

import cells
import pytensor
import pytensor.tensor as pt
from dataset import make_batch
from checkpoint import CheckpointError, read_arrays, save_arrays
from model import Model, ModelConfig
from vocab import BOS_ID, EOS_ID, PAD_ID, SPECIALS, Vocab

V = 12
CFG = ModelConfig(src_vocab_size=V, tgt_vocab_size=V, embed_size=6, hidden_size=8)
VOCAB = Vocab(SPECIALS + [f"w{i}" for i in range(V - len(SPECIALS))])


def random_pairs(n, seed, max_len=6):
    rng = np.random.default_rng(seed)
    return [
        (rng.integers(4, V, rng.integers(1, max_len + 1)), rng.integers(4, V, rng.integers(1, max_len + 1)))
        for _ in range(n)
    ]


class LSTMModel(Model):
    """The README's one-line edit of initModules(): an LSTM encoder instead of the GRU."""

    def initModules(self):
        modules = super().initModules()
        E, H = self.config.embed_size, self.config.hidden_size
        modules["encoder"] = cells.LSTM(E, H, name="encoder", rng=self.rng)
        return modules


@pytest.fixture(scope="module")
def model():
    return Model(CFG, VOCAB, VOCAB)


@pytest.fixture(scope="module")
def batch():
    return make_batch(random_pairs(5, seed=1))


def test_first_loss_is_about_log_vocab():
    """At the default architecture's sizes, an untrained model predicts nearly uniformly."""
    big_v = 6000
    untrained = Model(ModelConfig(src_vocab_size=big_v, tgt_vocab_size=big_v))
    rng = np.random.default_rng(2)
    pairs = [(rng.integers(4, big_v, 20), rng.integers(4, big_v, 20)) for _ in range(16)]
    nll, n = untrained.compile_eval()(*make_batch(pairs))
    assert float(nll / n) == pytest.approx(np.log(big_v), abs=0.05)


def test_padded_batch_loss_equals_sum_of_single_losses(model):
    """Padding plus mask: a batch's summed NLL and token count equal those of its pairs
    evaluated one at a time, unpadded."""
    pairs = random_pairs(6, seed=3)
    eval_fn = model.compile_eval()
    nll, n = eval_fn(*make_batch(pairs))
    singles = [eval_fn(*make_batch([p])) for p in pairs]
    assert float(n) == sum(len(t) + 1 for _, t in pairs)  # every target token plus EOS
    assert float(nll) == pytest.approx(sum(float(s[0]) for s in singles), rel=1e-5)
    rows, counts = model.compile_sentence_nll()(*make_batch(pairs))  # each sentence's own, padded batch
    np.testing.assert_allclose(rows, [float(s[0]) for s in singles], rtol=1e-5)
    assert counts.tolist() == [len(t) + 1 for _, t in pairs]


def test_gradients_match_finite_differences(model, batch):
    """d loss / d param for a few entries of every parameter, by central differences."""
    src, tgt = pt.imatrix(), pt.imatrix()
    loss, _ = model.loss(src, tgt)
    f_loss = pytensor.function([src, tgt], loss, mode=model.mode)
    f_grad = pytensor.function([src, tgt], pytensor.grad(loss, model.params), mode=model.mode)
    grads = f_grad(*batch)
    rng = np.random.default_rng(4)
    eps = 1e-2
    for p, g in zip(model.params, grads):
        value = p.get_value()
        flat_g = g.ravel()
        # the largest-gradient entries: well above float32 rounding in the differences
        for idx in np.argsort(-np.abs(flat_g))[:2].tolist() + [int(rng.integers(flat_g.size))]:
            bumped = value.copy().ravel()
            bumped[idx] += eps
            p.set_value(bumped.reshape(value.shape))
            up = float(f_loss(*batch))
            bumped[idx] -= 2 * eps
            p.set_value(bumped.reshape(value.shape))
            down = float(f_loss(*batch))
            p.set_value(value)
            numeric = (up - down) / (2 * eps)
            assert numeric == pytest.approx(flat_g[idx], abs=2e-3, rel=5e-2), (p.name, idx)


def test_decoded_logp_equals_teacher_forced_score(model):
    """Decoding (one step at a time in scan) and training (whole-sequence scan) compute the
    same distribution: each decoded output's log-probability equals minus its NLL."""
    pairs = random_pairs(8, seed=5)
    src, _ = make_batch(pairs)
    ys, logps = model.decode(src, max_len=40, temperature=1.0, rng=np.random.default_rng(5))
    eval_fn = model.compile_eval()
    checked = 0
    for b, out in enumerate(ys):
        if EOS_ID not in out:
            continue  # the teacher-forced score always includes the final EOS step
        tokens = out[: np.argmax(out == EOS_ID)]
        nll, _ = eval_fn(*make_batch([(pairs[b][0], tokens)]))
        assert -float(nll) == pytest.approx(float(logps[b]), abs=1e-4)
        checked += 1
    assert checked >= 4


def test_decode_never_emits_pad_or_bos_and_pads_after_eos(model):
    src, _ = make_batch(random_pairs(8, seed=6))
    ys, _ = model.decode(src, max_len=10, temperature=2.0, rng=np.random.default_rng(0))
    for row in ys:
        end = np.argmax(row == EOS_ID) if EOS_ID in row else len(row)
        assert PAD_ID not in row[:end] and BOS_ID not in row
        assert np.all(row[end + 1 :] == PAD_ID)


def test_low_temperature_sampling_equals_greedy(model):
    src, _ = make_batch(random_pairs(6, seed=7))
    greedy, _ = model.decode(src, max_len=8)
    cold, _ = model.decode(src, max_len=8, temperature=1e-4, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(greedy, cold)


def test_negative_temperature_is_an_error(model):
    with pytest.raises(ValueError, match="temperature"):
        model.decode(make_batch(random_pairs(1, 8))[0], temperature=-1.0)


def test_training_lowers_loss_and_nonfinite_gradients_leave_params(model):
    pairs = random_pairs(16, seed=9)
    src, tgt = make_batch(pairs)
    step = model.compile_train("adam", 1.0)
    first = float(step(src, tgt, np.float32(0.01))[0])
    for _ in range(30):
        last = float(step(src, tgt, np.float32(0.01))[0])
    assert last < first - 0.5

    before = [p.get_value() for p in model.params + model.opt_state]
    W = model.modules["ffout"].W
    good = W.get_value()
    bad = good.copy()
    bad[0, 0] = np.nan
    W.set_value(bad)
    loss, _, norm = step(src, tgt, np.float32(0.01))
    assert not np.isfinite(norm)
    W.set_value(good)
    after = [p.get_value() for p in model.params + model.opt_state]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)


def test_save_load_is_bit_identical_with_same_decoding_and_optimizer_state(model, tmp_path):
    model.compile_train("adam", 1.0)  # so there is optimizer state to save
    path = tmp_path / "ckpt.npz"
    model.save(path, {"step": 7})
    loaded = Model.load(path)
    for a, b in zip(model.params, loaded.params):
        assert a.name == b.name
        np.testing.assert_array_equal(a.get_value(), b.get_value())
    assert loaded.checkpoint_state == {"step": 7}
    assert loaded.src_vocab.itos == VOCAB.itos and loaded.config == model.config
    loaded.compile_train("adam", 1.0)
    for a, b in zip(model.opt_state, loaded.opt_state):
        assert a.name == b.name
        np.testing.assert_array_equal(a.get_value(), b.get_value())
    src, _ = make_batch(random_pairs(4, seed=10))
    np.testing.assert_array_equal(model.decode(src)[0], loaded.decode(src)[0])


def test_lstm_encoder_swap_trains_and_round_trips(tmp_path):
    lstm_model = LSTMModel(CFG, VOCAB, VOCAB)
    assert isinstance(lstm_model.modules["encoder"], cells.LSTM)
    assert lstm_model.modules["encoder"].W.get_value().shape == (6, 4 * 8)
    src, tgt = make_batch(random_pairs(16, seed=11))
    step = lstm_model.compile_train("adam", 1.0)
    losses = [float(step(src, tgt, np.float32(0.01))[0]) for _ in range(20)]
    assert losses[-1] < losses[0] - 0.3
    path = tmp_path / "lstm.npz"
    lstm_model.save(path)
    assert isinstance(LSTMModel.load(path).modules["encoder"], cells.LSTM)
    with pytest.raises(CheckpointError, match="'encoder' is a LSTM in the checkpoint but initModules\\(\\) builds a GRU"):
        Model.load(path)


def test_load_rejects_bad_checkpoints(model, tmp_path):
    good = tmp_path / "good.npz"
    model.save(good)

    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=r"truncated.npz: truncated \(a zip archive without its end\)"):
        Model.load(truncated)

    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, meta=np.array(json.dumps({"model_config": {}})), evil=np.array([{"a": 1}], dtype=object))
    with pytest.raises(CheckpointError, match=r"pickled.npz: holds Python objects \(pickled data\), which this project never writes; refused$"):
        Model.load(pickled)

    with zipfile.ZipFile(good) as z:
        arrays = {name[:-4]: np.load(z.open(name)) for name in z.namelist()}
    wrong_shape = dict(arrays)
    wrong_shape["param/encoder.U"] = np.zeros((3, 3), "float32")
    save_arrays(tmp_path / "shape.npz", wrong_shape)
    with pytest.raises(CheckpointError, match=r"encoder.U has shape \(3, 3\), the model needs \(8, 24\)"):
        Model.load(tmp_path / "shape.npz")

    missing = {k: v for k, v in arrays.items() if k != "param/decoder.W"}
    save_arrays(tmp_path / "missing.npz", missing)
    with pytest.raises(CheckpointError, match="missing param/decoder.W"):
        Model.load(tmp_path / "missing.npz")

    with pytest.raises(CheckpointError, match="no such checkpoint"):
        Model.load(tmp_path / "absent.npz")


def damaged(arrays, tmp_path, name, **changes):
    """An .npz like `arrays` with `changes` (None deletes), written without any checks."""
    bad = {k: v for k, v in {**arrays, **changes}.items() if v is not None}
    path = tmp_path / name
    np.savez(path, **bad)
    return path


def test_damaged_checkpoints_are_refused_in_one_true_line(model, tmp_path):
    good = tmp_path / "good.npz"
    model.save(good, {"step": 3})
    arrays = read_arrays(good)
    noise = tmp_path / "noise.npz"
    noise.write_bytes(np.random.default_rng(0).bytes(2000))
    with pytest.raises(CheckpointError) as err:
        Model.load(noise)
    assert str(err.value) == f"{noise}: not a checkpoint (not an .npz/zip archive)"  # no advice to unpickle
    U = arrays["param/encoder.U"].copy()
    U[0, 0] = np.nan
    with pytest.raises(CheckpointError, match="encoder.U holds NaN or inf; the file is damaged"):
        Model.load(damaged(arrays, tmp_path, "nan.npz", **{"param/encoder.U": U}))
    with pytest.raises(CheckpointError, match="param/encoder.U holds <U1 data, not numbers"):
        Model.load(damaged(arrays, tmp_path, "str.npz", **{"param/encoder.U": np.full(U.shape, "x")}))
    meta = json.loads(str(arrays["meta"]))
    with pytest.raises(CheckpointError, match="the tgt vocabulary has 5 entries, the model config 12"):
        Model.load(damaged(arrays, tmp_path, "vocab.npz", tgt_vocab=np.array(SPECIALS + ["a"])))
    newer = dict(meta, format_version=99)
    with pytest.raises(CheckpointError, match="format version 99 is newer than this code's"):
        Model.load(damaged(arrays, tmp_path, "newer.npz", meta=np.array(json.dumps(newer))))
    with pytest.raises(CheckpointError, match="unreadable model config"):
        Model.load(damaged(arrays, tmp_path, "list.npz", meta=np.array(json.dumps([1, 2]))))
    twice = tmp_path / "twice.npz"
    twice.write_bytes(good.read_bytes())
    with zipfile.ZipFile(twice, "a") as z, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name it writes
        z.writestr("param/encoder.U.npy", b"")
    with pytest.raises(CheckpointError, match="holds the member param/encoder.U.npy twice"):
        Model.load(twice)


def test_trained_checkpoint_resumes_only_with_its_whole_optimizer_state(tmp_path):
    trained = Model(ModelConfig(embed_size=4, hidden_size=4, src_vocab_size=8, tgt_vocab_size=8))
    trained.compile_train("adam", 1.0)
    path = tmp_path / "t.npz"
    trained.save(path, {"step": 5})
    arrays = read_arrays(path)
    no_opt = damaged(arrays, tmp_path, "no_opt.npz", **{k: None for k in arrays if k.startswith("opt/")})
    with pytest.raises(CheckpointError, match="no_opt.npz: missing opt/adam"):
        Model.load(no_opt).compile_train("adam", 1.0)
    key = next(k for k in arrays if k.startswith("opt/adam.m."))
    with pytest.raises(CheckpointError, match=f"{key} has shape \\(2,\\), the model needs"):
        Model.load(damaged(arrays, tmp_path, "shape.npz", **{key: np.zeros(2, "float32")})).compile_train("adam", 1.0)
    Model.load(path).compile_train("adam", 1.0)  # the whole state: resumes


def test_checkpoints_of_the_earlier_decoder_layout_still_load(model, tmp_path):
    """Checkpoints written before decoders were modules of their own record Cho's decoder by
    its bare cell (`GRU`) and have no input_feeding or zoneout setting: they load, with the
    same weights, as Decoder(GRU) with both off."""
    model.save(tmp_path / "new.npz")
    arrays = read_arrays(tmp_path / "new.npz")
    meta = json.loads(str(arrays["meta"]))
    assert meta["modules"]["decoder"] == "Decoder(GRU)"
    meta["modules"]["decoder"] = "GRU"
    for key in ("input_feeding", "zoneout"):
        del meta["model_config"][key]
    arrays["meta"] = np.array(json.dumps(meta))
    save_arrays(tmp_path / "old.npz", arrays)
    loaded = Model.load(tmp_path / "old.npz")
    assert not loaded.config.input_feeding and loaded.config.zoneout == 0.0
    for p, q in zip(model.params, loaded.params):
        np.testing.assert_array_equal(p.get_value(), q.get_value())
    meta["modules"]["decoder"] = "LSTM"
    arrays["meta"] = np.array(json.dumps(meta))
    save_arrays(tmp_path / "lstm.npz", arrays)
    with pytest.raises(CheckpointError, match=r"'decoder' is a LSTM in the checkpoint but initModules\(\) builds a "
                                              r"Decoder\(GRU\)"):
        Model.load(tmp_path / "lstm.npz")


def test_resuming_with_input_feeding_or_coverage_names_both_configurations(model, tmp_path):
    import dataclasses

    from configurator import ConfigError
    from train import TrainConfig, init_or_resume

    model.save(tmp_path / "ckpt_latest.npz", {"step": 3})
    cfg = TrainConfig(init_from="resume", out_dir=str(tmp_path))
    wanted = dataclasses.replace(CFG, input_feeding=True, attention="coverage")
    with pytest.raises(ConfigError, match=r"^cannot change architecture settings on resume: attention=coverage \(the "
                                          r"checkpoint's: none\), input_feeding=True \(the checkpoint's: False\)$"):
        init_or_resume(cfg, wanted, {"input_feeding", "attention"}, None)
