"""Cells against numpy versions of their documented equations; scan, masking and SGD."""
import numpy as np
import pytest

import backend
import layers
import optim
import pytensor
import pytensor.tensor as pt

MODE = backend.compile_mode("CVM")
I, H, B, T = 5, 7, 3, 6


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def numpy_gru(x, h, W, U, b, reset_after):
    """Cho et al. 2014, eqs. 5-8, written out with separate gate matrices."""
    Wz, Wr, Wh = np.split(W, 3, axis=1)
    Uz, Ur, Uh = np.split(U, 3, axis=1)
    bz, br, bh = np.split(b, 3)
    z = sigmoid(x @ Wz + h @ Uz + bz)
    r = sigmoid(x @ Wr + h @ Ur + br)
    if reset_after:
        h_tilde = np.tanh(x @ Wh + r * (h @ Uh) + bh)
    else:
        h_tilde = np.tanh(x @ Wh + (r * h) @ Uh + bh)
    return z * h + (1 - z) * h_tilde


def numpy_lstm(x, h, c, W, U, b):
    gates = x @ W + h @ U + b
    i, f, o, g = np.split(gates, 4, axis=1)
    c_new = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    return sigmoid(o) * np.tanh(c_new), c_new


def randomize(module, seed):
    """Non-trivial values for every param (biases included), so each term is exercised."""
    rng = np.random.default_rng(seed)
    for p in module.params:
        p.set_value(rng.normal(0, 0.5, p.get_value().shape).astype("float32"))


def values(module):
    return [p.get_value() for p in module.params]


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(0)


@pytest.mark.parametrize("reset_after", [False, True])
def test_gru_step_matches_numpy(rng, reset_after):
    gru = layers.GRU(I, H, reset_after=reset_after)
    randomize(gru, 1)
    x, h = pt.matrix("x"), pt.matrix("h")
    f = pytensor.function([x, h], gru.step(x, h), mode=MODE)
    xv = rng.normal(size=(B, I)).astype("float32")
    hv = rng.normal(size=(B, H)).astype("float32")
    np.testing.assert_allclose(f(xv, hv), numpy_gru(xv, hv, *values(gru), reset_after), atol=1e-5)


def test_gru_reset_conventions_differ(rng):
    """The two conventions are different functions, so the test above tells them apart."""
    xv = rng.normal(size=(B, I)).astype("float32")
    hv = rng.normal(size=(B, H)).astype("float32")
    gru = layers.GRU(I, H)
    randomize(gru, 1)
    cho, torch_style = (numpy_gru(xv, hv, *values(gru), flag) for flag in (False, True))
    assert np.abs(cho - torch_style).max() > 1e-3


def test_lstm_step_matches_numpy(rng):
    lstm = layers.LSTM(I, H)
    randomize(lstm, 2)
    x, h, c = pt.matrix("x"), pt.matrix("h"), pt.matrix("c")
    f = pytensor.function([x, h, c], lstm.step(x, h, c), mode=MODE)
    xv, hv, cv = (rng.normal(size=s).astype("float32") for s in ((B, I), (B, H), (B, H)))
    got_h, got_c = f(xv, hv, cv)
    want_h, want_c = numpy_lstm(xv, hv, cv, *values(lstm))
    np.testing.assert_allclose(got_h, want_h, atol=1e-5)
    np.testing.assert_allclose(got_c, want_c, atol=1e-5)


def test_lstm_forget_bias_starts_at_one():
    b = layers.LSTM(I, H).b.get_value()
    assert np.all(b[H : 2 * H] == 1.0) and np.all(b[:H] == 0) and np.all(b[2 * H :] == 0)


def test_ff_with_several_inputs_equals_concatenation(rng):
    ff = layers.FF([I, H], 4, "tanh")
    randomize(ff, 3)
    a, b = pt.tensor3("a"), pt.matrix("b")  # (T, B, I) and a per-sequence (B, H)
    f = pytensor.function([a, b], ff(a, b), mode=MODE)
    av = rng.normal(size=(T, B, I)).astype("float32")
    bv = rng.normal(size=(B, H)).astype("float32")
    W, bias = values(ff)
    joined = np.concatenate([av, np.broadcast_to(bv, (T, B, H))], axis=-1)
    np.testing.assert_allclose(f(av, bv), np.tanh(joined @ W + bias), atol=1e-5)


def test_unknown_activation_is_an_error():
    with pytest.raises(ValueError, match="softplusx"):
        layers.FF(3, 3, "softplusx")


def test_seed_style_scan_equals_unrolled_loop(rng):
    """`pytensor.scan(cell.step, sequences=x, outputs_info=h0)` as in the seed, against the
    same step applied T times in an unrolled graph."""
    gru = layers.GRU(I, H)
    randomize(gru, 4)
    x, h0 = pt.tensor3("x"), pt.matrix("h0")
    scanned = pytensor.scan(gru.step, sequences=x, outputs_info=h0, return_updates=False)
    unrolled, h = [], h0
    for t in range(T):
        h = gru.step(x[t], h)
        unrolled.append(h)
    f = pytensor.function([x, h0], [scanned, pt.stack(unrolled)], mode=MODE)
    got, want = f(rng.normal(size=(T, B, I)).astype("float32"), np.zeros((B, H), "float32"))
    np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("cell_class", [layers.GRU, layers.LSTM])
def test_padding_plus_mask_equals_no_padding(rng, cell_class):
    """Each sequence of a padded batch ends in the same state as when run alone, unpadded."""
    cell = cell_class(I, H)
    randomize(cell, 5)
    x, mask = pt.tensor3("x"), pt.matrix("mask")
    final = [s[-1] for s in cell.scan(cell.project(x), mask)]
    f = pytensor.function([x, mask], final, mode=MODE)
    lengths = [T, 2, 4]
    xv = rng.normal(size=(T, B, I)).astype("float32")
    mv = np.zeros((T, B), "float32")
    for b, n in enumerate(lengths):
        mv[:n, b] = 1
        xv[n:, b] = 1e3  # garbage in the padding must not leak into the state
    batched = f(xv, mv)
    for b, n in enumerate(lengths):
        alone = f(xv[:n, b : b + 1], np.ones((n, 1), "float32"))
        for got, want in zip(batched, alone):
            np.testing.assert_allclose(got[b], want[0], atol=1e-6)


def test_get_updates_is_sgd():
    ff = layers.FF(I, 2, "linear")
    x = pt.matrix("x")
    cost = pt.sum(ff(x) ** 2)
    lr = np.float32(0.1)
    updates = ff.getUpdates(cost, lr)
    assert [p for p, _ in updates] == ff.params
    grads = pytensor.grad(cost, ff.params)
    expected = optim.sgd(ff.params, grads, lr)
    xv = np.ones((B, I), "float32")
    f = pytensor.function([x], [new for _, new in updates] + [new for _, new in expected], mode=MODE)
    got = f(xv)
    for a, b in zip(got[:2], got[2:]):
        np.testing.assert_allclose(a, b, atol=1e-6)
    before = values(ff)
    pytensor.function([x], [], updates=updates, mode=MODE)(xv)
    assert not np.allclose(before[0], ff.W.get_value())  # the update really moved W


def test_clip_by_global_norm():
    grads = [pt.constant(np.array([3.0, 0.0], "float32")), pt.constant(np.array([4.0], "float32"))]
    clipped, norm = optim.clip_by_global_norm(grads, 1.0)
    f = pytensor.function([], clipped + [norm], mode=MODE)
    a, b, n = f()
    assert n == pytest.approx(5.0)
    assert np.sqrt(np.sum(a**2) + np.sum(b**2)) == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(a / b[0], [0.75, 0.0], atol=1e-6)  # direction kept
