"""The NDS2SAEFactory autoencoder: the original usage example, masking, stopping, resume, the zip,
and clear errors for bad generator output."""
import io
import json
import os
import sys
import zipfile

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

sys.path.insert(0, os.path.join(ROOT, "data", "sincos"))
from sincos import make_generator, make_sequences  # noqa: E402

import autoencoder  # noqa: E402
from autoencoder import ArchiveError, NDS2SAEFactory  # noqa: E402

N_ITER = 60  # the original example trains 3000 iterations; 60 show that everything runs and learns


def seed_factory(path, n_iterations=3000):
    """The original NDS2SAEFactory usage example, as written except for the import and the file name."""
    factory = NDS2SAEFactory()
    factory.set_output(path)
    factory.input_dim = 2  # Input is 2 dimensiona;
    factory.output_dim = 1  # Output is one dimensional
    factory.layer_sizes = [50, 30]
    factory.lrtype = "expdecay"
    factory.lrargs = dict(start_lr=0.02, finish_lr=0.00001, decay_steps=n_iterations)
    factory.keep_prob = 0.7
    factory.symmetric = True
    return factory


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The original example trained for N_ITER iterations; shared by the tests below."""
    path = str(tmp_path_factory.mktemp("ae") / "toy.zip")
    encoder = seed_factory(path).build()
    history = encoder.train(make_generator(400, 0), make_generator(100, 1),
                            n_iterations=N_ITER, batch_size=100, display_step=30)
    return encoder, path, history


def test_seed_example_trains_predicts_and_encodes(trained):
    encoder, path, history = trained
    assert os.path.exists(path)
    assert [h["iteration"] for h in history] == [30, 60]
    # An untrained model's validation MSE is about var(sin + cos) = 1.
    assert history[-1]["valid_mse"] < 0.6
    test_in, _ = make_sequences(5, seed=2)
    predicted = encoder.predict(test_in, max_len=50)
    assert len(predicted) == 5
    assert all(p.ndim == 2 and p.shape[1] == 1 and 1 <= len(p) <= 50 for p in predicted)
    encoded = encoder.encode(test_in)
    assert len(encoded) == 5 and all(e.shape == (80,) for e in encoded)  # 50 + 30


def test_prediction_is_deterministic_and_matches_the_loss(trained):
    """Dropout is off at inference: predictions repeat exactly, and their error at the true
    length is the validation MSE that the (dropout-free) eval graph reports."""
    encoder, _, _ = trained
    test_in, test_out = make_sequences(20, seed=3)
    lengths = [len(s) for s in test_out]
    a = encoder.predict(test_in, lengths=lengths)
    b = encoder.predict(test_in, lengths=lengths)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    mse = np.mean(np.concatenate([(p - o) ** 2 for p, o in zip(a, test_out)]))
    gen = lambda batch_size: (test_in, test_out, True)  # noqa: E731
    assert encoder.evaluate(gen)["mse"] == pytest.approx(mse, rel=1e-4)


def test_padding_does_not_change_results(trained):
    encoder, _, _ = trained
    (short, long), _ = make_sequences(2, seed=4, min_len=20, max_len=30)
    short = short[:6]
    alone_code = encoder.encode([short])[0]
    batched_code = encoder.encode([short, long])[0]
    np.testing.assert_allclose(alone_code, batched_code, atol=1e-6)
    alone = encoder.predict([short], lengths=[10])[0]
    batched = encoder.predict([short, long], lengths=[10, 3])[0]
    np.testing.assert_allclose(alone, batched, atol=1e-6)


def test_predict_cuts_at_the_stop_probability_and_max_len(trained):
    encoder, _, _ = trained
    test_in, _ = make_sequences(3, seed=5)
    bias = encoder.stop.b.get_value()
    try:
        encoder.stop.b.set_value(bias + 100.0)  # p_stop ~ 1 at the first step
        assert [len(p) for p in encoder.predict(test_in, max_len=30)] == [1, 1, 1]
        encoder.stop.b.set_value(bias - 100.0)  # never stops: max_len guards the loop
        assert [len(p) for p in encoder.predict(test_in, max_len=17)] == [17, 17, 17]
    finally:
        encoder.stop.b.set_value(bias)


def counting_generator(n_samples, seed, skip=0):
    """The sincos generator, advanced by `skip` batches of 100 (a user's resumed data)."""
    gen = make_generator(n_samples, seed)
    for _ in range(skip):
        gen(100)
    return gen


def test_resume_continues_exactly(tmp_path):
    whole = seed_factory(str(tmp_path / "whole.zip"), 30).build()
    whole.train(counting_generator(400, 0), make_generator(100, 1), n_iterations=30,
                batch_size=100, display_step=15)
    first = seed_factory(str(tmp_path / "split.zip"), 30).build()
    first.train(counting_generator(400, 0), make_generator(100, 1), n_iterations=15,
                batch_size=100, display_step=15)
    resumed = seed_factory(str(tmp_path / "split.zip"), 30).build()
    assert resumed.iteration == 15
    resumed.train(counting_generator(400, 0, skip=15), make_generator(100, 1), n_iterations=30,
                  batch_size=100, display_step=15)
    for a, b in zip(whole.params, resumed.params):
        np.testing.assert_array_equal(a.get_value(), b.get_value(), err_msg=a.name)
    assert whole.history == resumed.history


def test_set_output_reloads_settings_and_refuses_a_different_architecture(trained, tmp_path):
    _, path, _ = trained
    factory = NDS2SAEFactory()
    factory.set_output(path)
    assert factory.layer_sizes == [50, 30] and factory.keep_prob == 0.7
    factory.layer_sizes = [40, 30]
    with pytest.raises(ArchiveError, match=r"layer_sizes=\[40, 30\] differs from the saved \[50, 30\]"):
        factory.build()


# ---- the zip ----------------------------------------------------------------------------


def rewrite_zip(src, dst, drop=(), add=None, replace=None):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            if name not in drop:
                zout.writestr(name, (replace or {}).get(name, zin.read(name)))
        for name, data in (add or {}).items():
            zout.writestr(name, data)
    return dst


def test_zip_holds_only_npz_and_json(trained):
    _, path, _ = trained
    with zipfile.ZipFile(path) as zf:
        assert sorted(zf.namelist()) == sorted(autoencoder.ZIP_MEMBERS)
        json.loads(zf.read("settings.json"))


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(add={"../evil.json": b"{}"}), "refused member path '../evil.json'"),
        (dict(add={"/etc/evil": b""}), "refused member path '/etc/evil'"),
        (dict(add={"notes.txt": b"hi"}), "unexpected members notes.txt"),
        (dict(drop=("optimizer.npz",)), "missing members optimizer.npz"),
        (dict(replace={"state.json": b"{not json"}), "state.json is not valid JSON"),
    ],
)
def test_bad_zips_are_refused(trained, tmp_path, change, message):
    _, path, _ = trained
    bad = rewrite_zip(path, str(tmp_path / "bad.zip"), **change)
    with pytest.raises(ArchiveError, match=message.replace("(", r"\(").replace(")", r"\)")):
        NDS2SAEFactory().set_output(bad)


def test_pickled_params_are_refused_without_unpickling(trained, tmp_path):
    _, path, _ = trained
    buf = io.BytesIO()
    np.save(buf, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    evil = io.BytesIO()
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("enc0.W.npy", buf.getvalue())
    bad = rewrite_zip(path, str(tmp_path / "bad.zip"), replace={"params.npz": evil.getvalue()})
    with pytest.raises(ArchiveError, match="params.npz refused"):
        NDS2SAEFactory().set_output(bad)


def test_truncated_zip_is_refused(trained, tmp_path):
    _, path, _ = trained
    bad = tmp_path / "bad.zip"
    bad.write_bytes(open(path, "rb").read()[:500])
    with pytest.raises(ArchiveError, match="not a readable zip"):
        NDS2SAEFactory().set_output(str(bad))


# ---- bad input ----------------------------------------------------------------------------

GOOD_IN = [np.zeros((5, 2), np.float32)]
GOOD_OUT = [np.zeros((5, 1), np.float32)]


@pytest.mark.parametrize(
    "in_seq, out_seq, message",
    [
        ([np.zeros((5, 3))], GOOD_OUT, r"in_seq\[0\] has shape \(5, 3\); expected \(length, 2\)"),
        (GOOD_IN, [np.zeros((0, 1))], r"out_seq\[0\] is empty"),
        ([np.array([[0.0, 1.0], [np.nan, 0.0]])], GOOD_OUT, r"in_seq\[0\] holds nan at step 1, dimension 0"),
        (GOOD_IN, [np.array([[np.inf]])], r"out_seq\[0\] holds inf at step 0"),
        (GOOD_IN * 2, GOOD_OUT, "2 input sequences but 1 output sequences"),
    ],
)
def test_bad_generator_output_is_a_clear_error(trained, in_seq, out_seq, message):
    encoder, _, _ = trained
    before = [p.get_value() for p in encoder.params]
    with pytest.raises(ValueError, match=message):
        encoder.train(lambda n: (in_seq, out_seq, True), lambda n: (GOOD_IN, GOOD_OUT, True),
                      n_iterations=encoder.iteration + 1)
    assert all(np.array_equal(a, p.get_value()) for a, p in zip(before, encoder.params))


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("input_dim", None, "input_dim=None"),
        ("layer_sizes", [50, 0], "layer_sizes"),
        ("keep_prob", 1.5, "keep_prob=1.5"),
        ("lrtype", "cosine", "lrtype='cosine'"),
        ("lrargs", dict(lr=0.1), "takes exactly start_lr, finish_lr, decay_steps"),
    ],
)
def test_bad_settings_are_clear_errors(tmp_path, name, value, message):
    factory = seed_factory(str(tmp_path / "x.zip"))
    setattr(factory, name, value)
    with pytest.raises(ValueError, match=message):
        factory.build()


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("keep_prob", "abc", "keep_prob='abc': not a number"),
        ("lrargs", dict(start_lr=float("inf"), finish_lr=0.1, decay_steps=10), r"lrargs\['start_lr'\]=inf: must be a finite number"),
        ("grad_clip", float("nan"), "grad_clip=nan: must be a finite number"),
        ("seed", -1, "seed=-1: must be an int >= 0"),
    ],
)
def test_nonfinite_and_mistyped_settings_name_the_setting(tmp_path, name, value, message):
    factory = seed_factory(str(tmp_path / "x.zip"))
    setattr(factory, name, value)
    with pytest.raises(ValueError, match=message):
        factory.build()


def test_predict_and_encode_refuse_bad_batch_sizes_and_complex_input(trained):
    encoder = trained[0]
    seqs = [np.zeros((4, 2), np.float32)]
    for batch_size in (0, -1):
        for call in (encoder.predict, encoder.encode):
            with pytest.raises(ValueError, match=f"batch_size={batch_size}: must be a positive int"):
                call(seqs, batch_size=batch_size)
    with pytest.raises(ValueError, match=r"input\[0\] holds complex numbers"):
        encoder.predict([np.zeros((4, 2)) + 1j])


def test_nonfinite_weights_never_replace_a_saved_zip(trained, tmp_path):
    encoder = trained[0]
    path = tmp_path / "model.zip"
    encoder.save(str(path))
    before = path.read_bytes()
    param = encoder.params[0]
    good = param.get_value()
    try:
        param.set_value(np.full_like(good, np.nan))
        with pytest.raises(ArchiveError, match="not written: .* hold NaN or inf; the zip already there, if any, is unchanged"):
            encoder.save(str(path))
    finally:
        param.set_value(good)
    assert path.read_bytes() == before


def test_an_output_that_cannot_be_written_is_refused_by_set_output(tmp_path):
    """Said when the path is set, not after training: a path under a plain file, a folder
    nothing can be written in, a folder given for the zip."""
    plain = tmp_path / "plain"
    plain.write_text("")
    for path, message in ((plain / "x.zip", "plain is a file, not a folder"),
                          ("/proc/x.zip", "cannot write in /proc"), (tmp_path, "that is a folder")):
        with pytest.raises(ArchiveError, match=message):
            NDS2SAEFactory().set_output(path)


def test_the_zip_of_the_best_validation_loss_is_kept_beside_the_latest(trained):
    """<output>_best.zip holds the weights of the lowest validation loss so far, so a later
    jump in validation loss never costs the best model; it opens like any zip."""
    encoder, path, history = trained
    best = autoencoder.best_path(path)
    assert best.endswith("toy_best.zip") and os.path.exists(best)
    saved = autoencoder.read_archive(best)
    losses = [h["valid_loss"] for h in history]
    assert saved["state"]["history"][-1]["valid_loss"] == min(losses)
    assert autoencoder.best_path("model") == "model_best.zip"


def test_a_validation_pass_is_bounded():
    factory = NDS2SAEFactory()
    factory.input_dim, factory.output_dim, factory.layer_sizes = 2, 1, [4]
    model = factory.build()
    endless = make_generator(20, 1)
    with pytest.raises(ValueError, match="valid generator gave 5 batches without last_batch=True"):
        model.evaluate(lambda n: endless(n)[:2] + (False,), batch_size=4, max_batches=5)
