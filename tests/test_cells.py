"""The cells against numpy versions of their documented equations, scan and masking; the generic
time-loop op against scan, overrides honoured on every path, any cell in every slot, a user's
own cell and its checks, and training through each module's getUpdates."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cells
import modes
import layers
import pytensor
import pytensor.tensor as pt
from benchmarks.broken_cells import Float64, TwoStates, Wide
from checkpoint import CheckpointError
from configurator import ConfigError
from decode import beam_search
from helpers import HalfGRU, LeakyLSTM, UserMGU, batch, losses_of_training, randomize, tiny_config, values
from model import Model, ModelConfig
from recurrence import StepGraph
from train import TrainConfig, check
from vocab import BOS_ID, EOS_ID, PAD_ID

MODE = modes.compile_mode("CVM")
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


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(0)


@pytest.mark.parametrize("reset_after", [False, True])
def test_gru_step_matches_numpy(rng, reset_after):
    gru = cells.GRU(I, H, reset_after=reset_after)
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
    gru = cells.GRU(I, H)
    randomize(gru, 1)
    cho, torch_style = (numpy_gru(xv, hv, *values(gru), flag) for flag in (False, True))
    assert np.abs(cho - torch_style).max() > 1e-3


def test_lstm_step_matches_numpy(rng):
    lstm = cells.LSTM(I, H)
    randomize(lstm, 2)
    x, h, c = pt.matrix("x"), pt.matrix("h"), pt.matrix("c")
    f = pytensor.function([x, h, c], lstm.step(x, h, c), mode=MODE)
    xv, hv, cv = (rng.normal(size=s).astype("float32") for s in ((B, I), (B, H), (B, H)))
    got_h, got_c = f(xv, hv, cv)
    want_h, want_c = numpy_lstm(xv, hv, cv, *values(lstm))
    np.testing.assert_allclose(got_h, want_h, atol=1e-5)
    np.testing.assert_allclose(got_c, want_c, atol=1e-5)


def test_lstm_forget_bias_starts_at_one():
    b = cells.LSTM(I, H).b.get_value()
    assert np.all(b[H : 2 * H] == 1.0) and np.all(b[:H] == 0) and np.all(b[2 * H :] == 0)


def test_seed_style_scan_equals_unrolled_loop(rng):
    """`pytensor.scan(cell.step, sequences=x, outputs_info=h0)` as Theano code writes it, against the
    same step applied T times in an unrolled graph."""
    gru = cells.GRU(I, H)
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


@pytest.mark.parametrize("cell_class", [cells.GRU, cells.LSTM])
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


class ScaledGRU(cells.GRU):
    """A GRU subclass with a weight used outside any matmul: a per-unit scale."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.scale = self.add_param("scale", np.linspace(0.5, 1.5, self.hiddenSize))

    def recur(self, x_t, h_prev):
        return super().recur(x_t, h_prev) * self.scale + 0.1 * h_prev * self.scale


def numpy_mgu(x_proj, h, U):
    """UserMGU's equations in numpy, for one step on a projected input."""
    Hs = h.shape[1]
    f = sigmoid(x_proj[:, :Hs] + h @ U[:, :Hs])
    h_tilde = np.tanh(x_proj[:, Hs:] + (f * h) @ U[:, Hs:])
    return (1 - f) * h + f * h_tilde


# ---- the generic loop op against scan ---------------------------------------------------------

CELLS = {"gru": cells.GRU, "lstm": cells.LSTM, "half_gru": HalfGRU, "leaky_lstm": LeakyLSTM, "mgu": UserMGU,
         "scaled_gru": ScaledGRU}
_FUNCTIONS = {}


def loop_functions(name, go_backwards):
    """(fast, scan) versions of f(x, mask, h0, w) -> [every state sequence, d/dx, d/dh0,
    d/dparams] of sum(w * h) + sum(last state of every kind), from the same weights. The
    fast path is the cell's default: kernels.py for the stock GRU, recurrence.py otherwise."""
    key = (name, go_backwards)
    if key not in _FUNCTIONS:
        fns = []
        for fast_loop in (True, False):
            cell = CELLS[name](I, H, name="cell", rng=np.random.default_rng(7), fast_loop=fast_loop)
            for p in cell.params:  # biases too, so every term counts
                p.set_value(np.random.default_rng(1).normal(0, 0.5, p.get_value().shape).astype("float32"))
            x, m, h0, w = pt.tensor3("x"), pt.matrix("m"), pt.matrix("h0"), pt.tensor3("w")
            states = cell.scan(cell.project(x), m, init=cell.initial_state(h0), go_backwards=go_backwards)
            cost = (states[0] * w).sum() + sum(s[-1].sum() for s in states)
            grads = pytensor.grad(cost, [x, h0, *cell.params])
            fns.append(pytensor.function([x, m, h0, w], [*states, *grads], mode=MODE))
        _FUNCTIONS[key] = fns
    return _FUNCTIONS[key]


@settings(max_examples=10, deadline=None)
@given(
    name=st.sampled_from(sorted(CELLS)),
    go_backwards=st.booleans(),
    lengths=st.lists(st.integers(0, 5), min_size=1, max_size=3),
    seed=st.integers(0, 2**16),
)
def test_fast_loop_equals_scan_over_recur(name, go_backwards, lengths, seed):
    """Every cell, subclasses that override recur included, any lengths (0 too) and both
    directions: the fast path gives scan's states and gradients (inputs, h0, every param)."""
    rng = np.random.default_rng(seed)
    T, B = max(max(lengths), 1), len(lengths)
    mask = (np.arange(T)[:, None] < np.array(lengths)[None]).astype("float32")  # (T, B)
    args = [rng.standard_normal((T, B, I)).astype("float32"), mask,
            rng.standard_normal((B, H)).astype("float32"), rng.standard_normal((T, B, H)).astype("float32")]
    fast, scanned = loop_functions(name, go_backwards)
    for got, want in zip(fast(*args), scanned(*args)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=3e-5)


@pytest.mark.parametrize("go_backwards", [False, True])
def test_weights_outside_matmuls_get_their_gradient(go_backwards):
    """A weight read elementwise (not through a matmul) takes the step-by-step gradient path."""
    rng = np.random.default_rng(5)
    mask = np.array([[1, 1], [1, 1], [1, 0], [1, 0]], "float32")
    args = [rng.standard_normal((4, 2, I)).astype("float32"), mask,
            rng.standard_normal((2, H)).astype("float32"), rng.standard_normal((4, 2, H)).astype("float32")]
    fast, scanned = loop_functions("scaled_gru", go_backwards)
    for got, want in zip(fast(*args), scanned(*args)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=3e-5)
    cell = ScaledGRU(I, H)
    graph = StepGraph(cell, cell.recur, cell.n_states, [], modes.compile_mode())
    assert [graph.shared[k].name for k in graph.direct] == ["gru.scale"]


def test_override_is_not_the_stock_cell():
    """The check above could not pass by accident: HalfGRU's states differ from the GRU's."""
    rng = np.random.default_rng(0)
    args = [rng.standard_normal((4, 2, I)).astype("float32"), np.ones((4, 2), "float32"),
            rng.standard_normal((2, H)).astype("float32"), np.ones((4, 2, H), "float32")]
    half, stock = loop_functions("half_gru", False)[0](*args)[0], loop_functions("gru", False)[0](*args)[0]
    assert np.abs(half - stock).max() > 0.1


def test_fast_paths_are_the_ones_expected():
    """The stock GRU runs gru_kernel.GRUSequence; a GRU subclass with its own recur, the LSTM and
    a user's cell run recurrence.StepLoop; fast_loop=False runs scan."""
    x, m = pt.tensor3("x"), pt.matrix("m")

    def ops(cell):
        out = cell.scan(cell.project(x), m)[0]
        return {type(v.owner.op).__name__ for v in pytensor.graph.traversal.ancestors([out]) if v.owner}

    assert "GRUSequence" in ops(cells.GRU(I, H))
    for cell in (HalfGRU(I, H), cells.LSTM(I, H), UserMGU(I, H)):
        found = ops(cell)
        assert "StepLoop" in found and "GRUSequence" not in found and "Scan" not in found
    assert "Scan" in ops(cells.LSTM(I, H, fast_loop=False))


def test_user_cell_matches_numpy_and_finite_differences():
    """The README's recipe for a new cell: its step against a numpy version of its
    equations, and its gradient against finite differences."""
    cell = UserMGU(I, H, name="mgu", rng=np.random.default_rng(2))
    x, h = pt.matrix("x"), pt.matrix("h")
    step = pytensor.function([x, h], cell.recur(x, h), mode=MODE)
    rng = np.random.default_rng(3)
    xv, hv = rng.standard_normal((4, 2 * H)).astype("float32"), rng.standard_normal((4, H)).astype("float32")
    np.testing.assert_allclose(step(xv, hv), numpy_mgu(xv, hv, cell.U.get_value()), rtol=1e-5, atol=1e-6)
    # Gradient of sum(w * h') for x, h and U against central differences of the numpy
    # equations in float64, at a few coordinates of each.
    w = rng.standard_normal((4, H))
    cost = (cell.recur(x, h) * w.astype("float32")).sum()
    grads = pytensor.function([x, h], pytensor.grad(cost, [x, h, cell.U]), mode=MODE)(xv, hv)
    values = [xv.astype("float64"), hv.astype("float64"), cell.U.get_value().astype("float64")]
    for which, grad in enumerate(grads):
        for index in list(zip(*[rng.integers(0, n, 3) for n in values[which].shape])):
            shifted = []
            for sign in (1, -1):
                args = [v.copy() for v in values]
                args[which][index] += sign * 1e-5
                shifted.append((numpy_mgu(*args) * w).sum())
            np.testing.assert_allclose(grad[index], (shifted[0] - shifted[1]) / 2e-5, rtol=1e-3, atol=1e-4)


# ---- any cell in every slot --------------------------------------------------------------------


def recurrent_slots(model):
    """(module name, the cell in it) for every recurrent slot of the model."""
    slots = []
    for name, module in model.modules.items():
        cell = getattr(module, "cell", module)
        if isinstance(cell, cells.Recurrent):
            slots.append((name, cell))
    return slots


@pytest.mark.parametrize("cell, attention", [("lstm", "bahdanau"), ("test_mgu", "luong")])
def test_every_slot_takes_the_cell_with_attention_bidirectional_stacked(cell, attention):
    """One setting puts the cell in each encoder layer, both directions and the attention
    decoder; the model trains, decodes greedily and with a beam (both attention kinds)."""
    model = Model(tiny_config(cell=cell, attention=attention, bidirectional=True, encoder_layers=2))
    slots = recurrent_slots(model)
    assert sorted(name for name, _ in slots) == ["decoder", "encoder", "encoder1", "encoder1_bwd", "encoder_bwd"]
    assert all(type(c) is cells.cell_class(cell) for _, c in slots)
    src, tgt = batch(0)
    losses, _ = losses_of_training(model, src, tgt)
    assert losses[-1] < losses[0] - 0.3
    ys, logps = model.decode(src, max_len=6)
    outputs, scores = beam_search(model, src, beam_size=2, max_len=6)
    assert ys.shape[0] == 4 and len(outputs) == 4 and np.isfinite(logps).all() and np.isfinite(scores).all()


def test_lstm_attention_query_is_h_not_c():
    """The attention decoder reads the first state (h) of a multi-state cell."""
    model = Model(tiny_config(cell="lstm", attention="luong"))
    dec = model.modules["decoder"]
    h, c = pt.matrix("h"), pt.matrix("c")
    annotations, mask = pt.tensor3("a"), pt.matrix("m")
    _, _, weights = dec.step(pt.matrix("emb"), [h, c], [annotations, mask])
    assert c not in pytensor.graph.traversal.ancestors([weights])
    assert h in pytensor.graph.traversal.ancestors([weights])


cells.register_cell("test_half_gru")(HalfGRU)
cells.register_cell("test_leaky_lstm")(LeakyLSTM)


@pytest.mark.parametrize("cell", ["test_half_gru", "test_leaky_lstm"])
def test_overrides_are_honoured_in_training_evaluation_and_decoding(cell):
    """In every slot of a model: the teacher-forced loss through the fast loop equals the one
    through scan over the override's recur, and greedy and beam decoding (which step recur
    one token at a time) report the log-probabilities the training path gives their output."""
    fast, slow = Model(tiny_config(cell=cell)), Model(tiny_config(cell=cell))  # same init seed
    assert all(type(c) is cells.CELLS[cell] for _, c in recurrent_slots(fast))
    for _, c in recurrent_slots(slow):
        c.fast_loop = False
    src, tgt = batch(1)
    nll_fast, _ = fast.compile_eval()(src, tgt)
    nll_slow, _ = slow.compile_eval()(src, tgt)
    np.testing.assert_allclose(nll_fast, nll_slow, rtol=1e-5)
    ys, logps = fast.decode(src, max_len=5)
    outputs, beam_scores = beam_search(fast, src, beam_size=2, max_len=5)
    score = fast.compile_eval()
    for i in range(src.shape[1]):
        greedy = [int(w) for w in ys[i] if w != PAD_ID]  # with its EOS if it ended
        beam = outputs[i] + ([EOS_ID] if len(outputs[i]) < 5 else [])
        for out, reported in ((greedy, logps[i]), (beam, beam_scores[i])):
            nll, _ = score(src[:, i : i + 1], np.array([[BOS_ID] + out], dtype="int32").T)
            np.testing.assert_allclose(-nll, reported, rtol=1e-4, atol=1e-4)


# ---- getUpdates is the training path ---------------------------------------------------------


class FrozenEncoderModel(Model):
    def initModules(self):
        modules = super().initModules()
        modules["encoder"].frozen = True
        modules["readout"].lr_scale = 0.5
        return modules


def test_frozen_module_stays_bit_identical_while_the_rest_moves():
    model = FrozenEncoderModel(tiny_config(cell="lstm"))
    before = {p.name: p.get_value() for p in model.params}
    step = model.compile_train("adam", 1.0)
    src, tgt = batch(2)
    for _ in range(3):
        step(src, tgt, np.float32(0.05))
    for p in model.params:
        if p.name.startswith("encoder."):
            np.testing.assert_array_equal(p.get_value(), before[p.name])
        else:
            assert not np.array_equal(p.get_value(), before[p.name]), p.name
    assert "adam.t.encoder" not in {v.name for v in model.opt_state}


def test_lr_scale_scales_a_modules_sgd_step():
    """With SGD and no clipping, readout's first update is half of what it is unscaled."""
    plain, scaled = Model(tiny_config()), FrozenEncoderModel(tiny_config())
    src, tgt = batch(3)
    moves = []
    for model in (plain, scaled):
        before = model.modules["readout"].W.get_value()
        model.compile_train("sgd", 0.0)(src, tgt, np.float32(0.1))
        moves.append(model.modules["readout"].W.get_value() - before)
    np.testing.assert_allclose(moves[1], 0.5 * moves[0], rtol=1e-4, atol=1e-7)


def test_getUpdates_with_the_seeds_signature_is_still_sgd():
    ff = layers.FF(3, 2, name="ff")
    x = pt.matrix("x")
    cost = (ff(x) ** 2).sum()
    (p, new), _ = ff.getUpdates(cost, 0.1)
    grad = pytensor.grad(cost, ff.W)
    f = pytensor.function([x], [new, ff.W - 0.1 * grad], mode=MODE)
    a, b = f(np.ones((2, 3), "float32"))
    np.testing.assert_allclose(a, b)


# ---- bad input -----------------------------------------------------------------------------


def test_unknown_cell_is_one_line_listing_the_choices():
    with pytest.raises(ConfigError, match=r"cell='rnn'.*gru.*lstm"):
        check(TrainConfig(), tiny_config(cell="rnn"))
    with pytest.raises(ConfigError, match="reset_after"):
        check(TrainConfig(), tiny_config(cell="lstm", reset_after=True))
    assert cells.cell_class("benchmarks.mgu:MGU").__name__ == "MGU"


class LSTMEncoderModel(Model):
    def initModules(self):
        modules = super().initModules()
        modules["encoder"] = cells.LSTM(self.config.embed_size, self.config.hidden_size, name="encoder", rng=self.rng)
        return modules


def test_loading_a_checkpoint_of_another_cell_names_the_module_and_cells(tmp_path):
    path = str(tmp_path / "gru.npz")
    Model(tiny_config()).save(path)
    with pytest.raises(CheckpointError, match=r"'encoder' is a GRU in the checkpoint but initModules\(\) builds a LSTM"):
        LSTMEncoderModel.load(path)
    Model(tiny_config(cell="lstm", attention="bahdanau")).save(path)
    loaded = Model.load(path)
    assert type(loaded.modules["decoder"].cell) is cells.LSTM


def test_cells_per_slot_are_settings_saved_in_the_checkpoint(tmp_path):
    """encoder_cell and decoder_cell put other cells in those slots; the checkpoint holds the
    settings, so a stock Model.load (sample.py, evaluate.py) rebuilds the mix."""
    model = Model(tiny_config(encoder_cell="lstm", decoder_cell="test_mgu", attention="bahdanau", bidirectional=True))
    kinds = {name: type(c).__name__ for name, c in recurrent_slots(model)}
    assert kinds == {"encoder": "LSTM", "encoder_bwd": "LSTM", "decoder": "UserMGU"}
    src, tgt = batch(2)
    loss = model.compile_eval()(src, tgt)[0]
    model.save(tmp_path / "mix.npz")
    loaded = Model.load(tmp_path / "mix.npz")
    assert {name: type(c).__name__ for name, c in recurrent_slots(loaded)} == kinds
    assert float(loaded.compile_eval()(src, tgt)[0]) == float(loss)
    with pytest.raises(ConfigError, match=r"^decoder_cell='nope': unknown cell 'nope'; choose one of"):
        check(TrainConfig(), tiny_config(decoder_cell="nope"))
    with pytest.raises(ConfigError, match=r"^reset_after=true is a GRU setting; no slot has a GRU \(lstm\)$"):
        check(TrainConfig(), tiny_config(cell="lstm", reset_after=True))


@pytest.mark.parametrize("cls, message", [
    (Wide, r"Wide.recur returned states of shapes \[\(2, 10\)\]; expected \[\(2, 5\)\]"),
    (Float64, "Float64.recur returned a float64 state 0; expected float32"),
    (TwoStates, r"TwoStates.recur returned 2 state\(s\); n_states is 1"),
])
def test_a_broken_cell_is_named_with_what_recur_returned(cls, message):
    with pytest.raises(ValueError, match=message):
        cells.check_cell(cls)
    cells.check_cell(cells.LSTM)  # a good one passes


@pytest.mark.parametrize("source, message", [
    ("raise RuntimeError('no GPU here')\n", r"importing \w+ failed: RuntimeError: no GPU here"),
    ("def broken(:\n", r"importing \w+ failed: SyntaxError: .*line 1"),
])
def test_a_cell_module_that_fails_to_import_is_one_line(tmp_path, monkeypatch, source, message):
    name = f"usercell_{abs(hash(source)) % 10**6}"
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=rf"^cell='{name}:X': {message}"):
        check(TrainConfig(), ModelConfig(cell=f"{name}:X"))
