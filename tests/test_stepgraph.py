"""One step's graph as the generic loop sees it (stepgraph.py): what a step may read, the
weight matmuls cut out of the per-step gradient, the forward function against the step
compiled as it is, and what is computed once per loop."""
import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest

import cells
import modes
from attention import batched_vector_matrix
from stepgraph import StepGraph, UnsupportedStep

MODE = modes.compile_mode("CVM")
I, H, B = 3, 4, 2


def test_what_a_step_may_read_is_checked_and_named():
    gru = cells.GRU(I, H, name="enc")
    outer = pt.scalar("outer")
    with pytest.raises(UnsupportedStep, match=r"enc: the step reads outer, which is not its input"):
        StepGraph(gru, lambda x, h: gru.recur(x, h) * outer, 1, [], MODE)
    wide = pytensor.shared(np.ones(H), name="wide")  # float64
    with pytest.raises(UnsupportedStep, match=r"enc: the step reads shared variables that are not float32: wide"):
        StepGraph(gru, lambda x, h: gru.recur(x, h) * wide, 1, [], MODE)
    with pytest.raises(ValueError, match="enc: the step returned 2 outputs, expected 1 states"):
        StepGraph(gru, lambda x, h: [h, h], 1, [], MODE)


@pytest.mark.parametrize("reset_after, n_matmuls", [(False, 2), (True, 1)])
def test_weight_matmuls_are_cut_and_the_forward_step_is_the_step(reset_after, n_matmuls):
    """Cho's GRU has two matmuls with U (h U_zr and (r * h) U_h), reset_after one (h U): each
    is cut out of the per-step gradient. Forward computes what the step computes."""
    gru = cells.GRU(I, H, name="gru", rng=np.random.default_rng(0), reset_after=reset_after)
    graph = StepGraph(gru, gru.recur, 1, [], MODE)
    assert len(graph._cut[1]) == n_matmuls and graph.dot_is_x == [False] * n_matmuls
    assert [w.name for w in graph.W] == ["w.gru.U"]
    graph.compile()
    graph.forward.bind([gru.U.get_value()])
    assert graph.forward.constants  # U's slices, made once per loop
    rng = np.random.default_rng(1)
    x, h = rng.standard_normal((B, 3 * H)).astype("float32"), rng.standard_normal((B, H)).astype("float32")
    xs, hs = pt.matrix("x"), pt.matrix("h")
    want = pytensor.function([xs, hs], gru.recur(xs, hs), mode=MODE)(x, h)
    np.testing.assert_allclose(graph.forward(x, h)[0], want, rtol=1e-5, atol=1e-6)


def test_the_lstm_step_functions_copy_nothing_and_join_the_gates_gradient():
    """The forward step returns views of its own arrays without copying them (they are
    borrowed: every call returns new ones, tested against scan in test_recurrence); literal
    constants stay in the step, so the gradient of the four gate blocks is one Join."""
    lstm = cells.LSTM(I, H, name="lstm", rng=np.random.default_rng(0))
    graph = StepGraph(lstm, lstm.recur, 2, [], MODE)
    assert graph.dot_is_x == [True]  # gates = x_t + h U: the loop stacks d x_t for U's gradient
    graph.compile(())
    names = lambda fn: [type(getattr(n.op, "op", n.op)).__name__ for n in fn.step.maker.fgraph.apply_nodes]  # noqa: E731
    assert "DeepCopyOp" not in names(graph.forward)
    backward = names(graph.backward[()][0])
    assert "IncSubtensor" not in backward and backward.count("Join") == 1, backward  # [i f o g]
    rng = np.random.default_rng(1)
    x, h, c = (rng.standard_normal((B, n)).astype("float32") for n in (4 * H, H, H))
    graph.forward.bind([lstm.U.get_value()])
    out = graph.forward(x, h, c)
    first = [a.copy() for a in out]
    graph.forward(-x, c, h)  # a second call leaves the first call's arrays as they were
    for a, b in zip(out, first):
        np.testing.assert_array_equal(a, b)
    xs, hs, cs = pt.matrix("x"), pt.matrix("h"), pt.matrix("c")
    want = pytensor.function([xs, hs, cs], lstm.recur(xs, hs, cs), mode=MODE)(x, h, c)
    for got, w in zip(first[:2], want):
        np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-6)


def test_an_outer_product_with_a_weight_stays_in_the_step():
    """(B, 1) @ (1, H), coverage's cov w_c: not cut (stacking its per-step gradient would hold
    a (B, H) array per step for a weight gradient that costs as little inside the step); the
    matmul with U still is."""
    gru = cells.GRU(I, H, name="gru", rng=np.random.default_rng(0))
    w = gru.add_param("w_col", np.full(H, 0.5, dtype="float32"))

    def step(x, h):
        return gru.recur(x, h) + pt.dot(h[:, 0][:, None], w[None, :])

    graph = StepGraph(gru, step, 1, [], MODE)
    assert len(graph._cut[1]) == 2  # Cho's two matmuls with U only
    assert [g.name for g in graph.W] == ["w.gru.U", "w.gru.w_col"] and graph.direct == [1]


def test_the_loop_constants_are_the_weights_and_memory_not_copies():
    """Once per loop: U (the LSTM's one matmul weight) is passed as it is, its transpose (the
    backward's d gates @ U^T) made contiguous once; a (B, k, n) memory that only batched
    matmuls read stays a strided view (numpy's transposing copy cost 5 ms a loop); the steps
    still compute what scan computes (test_recurrence, test_attention)."""
    lstm = cells.LSTM(I, H, name="lstm", rng=np.random.default_rng(0))
    U = lstm.U.get_value(borrow=True)
    graph = StepGraph(lstm, lstm.recur, 2, [], MODE)
    graph.compile(())
    graph.forward.bind([U])
    assert [c is U for c in graph.forward.constants] == [True]
    backward = graph.backward[()][0]
    backward.bind([U])
    (UT,) = backward.constants
    assert UT.flags.c_contiguous and not np.shares_memory(UT, U)
    np.testing.assert_array_equal(UT, U.T)

    def step(x, h, memory):  # h (B, H) reads memory (Ts, B, H) transposed to (B, H, Ts)
        scores = batched_vector_matrix(h, memory.dimshuffle(1, 2, 0))  # (B, Ts)
        return pt.tanh(x[:, :H] + pt.dot(h, lstm.U[:, :H]) + scores.sum(1, keepdims=True))

    graph = StepGraph(lstm, step, 1, [pt.tensor3().type], MODE)
    graph.compile()
    memory = np.random.default_rng(1).standard_normal((5, B, H)).astype("float32")
    graph.forward.bind([U, memory])
    views = [c for c in graph.forward.constants if c.ndim == 3]
    assert len(views) == 1 and np.shares_memory(views[0], memory) and not views[0].flags.c_contiguous
