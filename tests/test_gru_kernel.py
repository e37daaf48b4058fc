"""The GRU's hand-written loop (gru_kernel.GRUSequence) against cells.GRU under scan: values
and gradients, both reset conventions, with padding, forwards and backwards."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import cells
import gru_kernel
import modes
import pytensor
import pytensor.tensor as pt
from recurrence import StepLoop

MODE = modes.compile_mode()

I, H = 3, 5
_GRUS = {}


def gru_functions(reset_after, go_backwards, hidden=H):
    """(fast_loop, scan) versions of f(x, mask, h0, w) -> [states, d/dx, d/dh0, d/dW, d/dU, d/db]
    of sum(w * states), built once per setting from the same weights."""
    key = (reset_after, go_backwards, hidden)
    if key not in _GRUS:
        fns = []
        for fast_loop in (True, False):
            gru = cells.GRU(I, hidden, rng=np.random.default_rng(7), reset_after=reset_after, fast_loop=fast_loop)
            x, m, h0, w = pt.tensor3("x"), pt.matrix("m"), pt.matrix("h0"), pt.tensor3("w")
            states = gru.scan(gru.project(x), m, init=[h0], go_backwards=go_backwards)[0]
            grads = pytensor.grad((states * w).sum(), [x, h0, *gru.params])
            fns.append(pytensor.function([x, m, h0, w], [states, *grads], mode=MODE))
        _GRUS[key] = fns
    return _GRUS[key]


@settings(max_examples=12, deadline=None)
@given(
    reset_after=st.booleans(),
    go_backwards=st.booleans(),
    lengths=st.lists(st.integers(0, 6), min_size=1, max_size=4),
    seed=st.integers(0, 2**16),
)
def test_fast_loop_gru_equals_scan_values_and_gradients(reset_after, go_backwards, lengths, seed):
    """Any lengths (0 included), both conventions and directions: same states, same
    gradients for the inputs, the initial state and every weight."""
    rng = np.random.default_rng(seed)
    T, B = max(max(lengths), 1), len(lengths)
    mask = (np.arange(T)[:, None] < np.array(lengths)[None]).astype("float32")  # (T, B)
    args = [rng.standard_normal((T, B, I)).astype("float32"), mask,
            rng.standard_normal((B, H)).astype("float32"), rng.standard_normal((T, B, H)).astype("float32")]
    fast_loop, scanned = gru_functions(reset_after, go_backwards)
    for got, want in zip(fast_loop(*args), scanned(*args)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5)


def test_fast_loop_gru_padding_carries_the_state_and_gets_no_gradient():
    """A sequence of length 2 padded to 4: states after it equal its last real state, and
    the input gradient on the padded steps is exactly 0."""
    rng = np.random.default_rng(3)
    mask = np.array([[1], [1], [0], [0]], "float32")
    x = rng.standard_normal((4, 1, I)).astype("float32")
    states, dx = gru_functions(False, False)[0](x, mask, np.zeros((1, H), "float32"), np.ones((4, 1, H), "float32"))[:2]
    np.testing.assert_array_equal(states[2], states[1])
    np.testing.assert_array_equal(states[3], states[1])
    assert not dx[2:].any() and dx[:2].any()


def ops_of(fn):
    return {type(node.op) for node in fn.maker.fgraph.apply_nodes}


def test_the_c_loop_runs_both_passes_and_agrees_beyond_one_vector_width():
    """The fast-loop function runs GRUSequence and its gradient op (no generic loop); at a
    width of 37 (two vector widths and a remainder) and batch 3, it still equals scan."""
    assert gru_kernel.available()
    rng = np.random.default_rng(11)
    mask = np.array([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 0, 0]], "float32")
    for reset_after in (False, True):
        fast_loop, scanned = gru_functions(reset_after, False, hidden=37)
        assert {gru_kernel.GRUSequence, gru_kernel.GRUSequenceGrad} <= ops_of(fast_loop)
        assert StepLoop not in ops_of(fast_loop)
        args = [rng.standard_normal((4, 3, I)).astype("float32"), mask,
                rng.standard_normal((3, 37)).astype("float32"), rng.standard_normal((4, 3, 37)).astype("float32")]
        for got, want in zip(fast_loop(*args), scanned(*args)):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5)


def test_without_the_c_loop_the_gru_takes_the_generic_loop(monkeypatch):
    """No C compiler or no OpenBLAS in numpy: the stock GRU runs on recurrence.StepLoop."""
    monkeypatch.setattr(gru_kernel, "available", lambda: False)
    gru = cells.GRU(I, H, rng=np.random.default_rng(7))
    x, m, h0 = pt.tensor3("x"), pt.matrix("m"), pt.matrix("h0")
    states = gru.scan(gru.project(x), m, init=[h0])[0]
    fn = pytensor.function([x, m, h0], states, mode=MODE)
    assert gru_kernel.GRUSequence not in ops_of(fn)
    assert any(isinstance(node.op, StepLoop) for node in fn.maker.fgraph.apply_nodes)


def test_the_c_loop_takes_empty_sequences_and_batches():
    """No timesteps: no states, zero gradients for h0 and U; an empty batch: empty arrays."""
    rng = np.random.default_rng(5)
    U = rng.standard_normal((H, 3 * H)).astype("float32")
    for T, B in ((0, 2), (3, 0)):
        x, mask = np.zeros((T, B, 3 * H), "float32"), np.ones((T, B), "float32")
        h0 = rng.standard_normal((B, H)).astype("float32")
        for reset_after in (False, True):
            forward = [[None] for _ in range(4)]
            gru_kernel.GRUSequence(reset_after).perform(None, [x, mask, h0, U], forward)
            assert forward[0][0].shape == (T, B, H)
            grads = [[None] for _ in range(3)]
            g_states = np.ones((T, B, H), "float32")
            inputs = [mask, h0, U, *(f[0] for f in forward), g_states]
            gru_kernel.GRUSequenceGrad(reset_after).perform(None, inputs, grads)
            assert grads[0][0].shape == (T, B, 3 * H) and grads[1][0].shape == (B, H)
            np.testing.assert_array_equal(grads[2][0], np.zeros_like(U))
            if T == 0:
                np.testing.assert_array_equal(grads[1][0], np.zeros_like(h0))
