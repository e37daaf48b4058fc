"""recurrence.py: the one loop entry point. Which path each owner and mode takes, the
fallback said once, and a module's loop compiled with pytensor.function's default mode
(the project's import makes it the C backend) and with Numba when that is the default."""
import warnings

import numpy as np
import pytest

import cells
import modes
import pytensor
import pytensor.tensor as pt
import recurrence
from attention import Attention
from decoder import AttentionDecoder

E, H, C = 3, 4, 5


def ops(fn_or_var):
    nodes = fn_or_var.maker.fgraph.apply_nodes if hasattr(fn_or_var, "maker") else \
        [v.owner for v in pytensor.graph.traversal.ancestors([fn_or_var]) if v.owner]
    return {type(node.op).__name__ for node in nodes}


def lstm_and_decoder(mode=None):
    """Graphs of an LSTM's loop and an attention decoder's loop, built with `mode`."""
    rng = np.random.default_rng(0)
    x, mask, annotations, src_mask = pt.tensor3("x"), pt.matrix("mask"), pt.tensor3("a"), pt.matrix("sm")
    cell = cells.LSTM(E, H, name="lstm", rng=rng)
    h = cell.scan(cell.project(x), mask, mode=mode)[0]
    dec = AttentionDecoder(cells.GRU(E, H, name="dec", rng=rng), C, Attention(H, C, 6, "dec.attention", rng), rng)
    memory = dec.prepare({"annotations": annotations, "src_mask": src_mask})
    memory = [memory[k] for k in dec.memory_names]
    s = dec.scan(x, mask, dec.initial_state(pt.zeros((x.shape[1], H)), memory), memory, mode=mode)[0][0]
    return [x, mask, annotations, src_mask], [h, s]


def values(T=4, B=2, Ts=3):
    rng = np.random.default_rng(1)
    return [rng.standard_normal((T, B, E)).astype("float32"), np.ones((T, B), "float32"),
            rng.standard_normal((Ts, B, C)).astype("float32"), np.ones((Ts, B), "float32")]


def test_the_default_mode_is_the_c_backend_and_runs_the_fast_loops():
    """The README's promise for a user of the modules: built and compiled without naming a
    mode, a cell's and a decoder's loops run as StepLoop and compile."""
    assert modes.default_mode_name() == "CVM"
    inputs, outputs = lstm_and_decoder()
    f = pytensor.function(inputs, outputs + pytensor.grad(sum(o.sum() for o in outputs), inputs[:1]))
    assert "StepLoop" in ops(f) and "Scan" not in ops(f)
    h, s, dx = f(*values())
    assert h.shape == (4, 2, H) and s.shape == (4, 2, H) and dx.shape == (4, 2, E)


def test_with_numba_the_default_loops_are_scans_numba_compiles():
    """With PYTENSOR_FLAGS=mode=NUMBA, a module built with no mode builds scan, which Numba
    compiles, and computes what the C backend's fast loop computes."""
    inputs, outputs = lstm_and_decoder()
    want = pytensor.function(inputs, outputs)(*values())
    with pytensor.config.change_flags(mode="NUMBA"):
        assert modes.default_mode_name() == "NUMBA"
        inputs, outputs = lstm_and_decoder()
        assert "StepLoop" not in ops(outputs[0]) and "Scan" in ops(outputs[0])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Numba's own performance notes
            got = pytensor.function(inputs, outputs)(*values())
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


class ReadsAnOuterVariable(cells.GRU):
    """A cell whose step reads a variable of the outer graph: it cannot run alone."""

    def recur(self, x_t, h_prev):
        return super().recur(x_t, h_prev) * self.scale


def test_each_path_and_the_fallback_said_once():
    x, mask = pt.tensor3("x"), pt.matrix("mask")
    gru = cells.GRU(E, H, name="gru")
    assert "GRUSequence" in ops(gru.scan(gru.project(x), mask)[0])  # the stock GRU's kernel
    lstm = cells.LSTM(E, H, name="lstm")
    assert "StepLoop" in ops(lstm.scan(lstm.project(x), mask)[0])
    slow = cells.LSTM(E, H, name="slow", fast_loop=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", recurrence.SlowLoopWarning)  # asked for: no word
        assert "Scan" in ops(slow.scan(slow.project(x), mask)[0])
        assert "Scan" in ops(lstm.scan(lstm.project(x), mask, mode="JAX")[0]) if _has_jax() else True
    odd = ReadsAnOuterVariable(E, H, name="odd")
    odd.scale = pt.scalar("scale")
    with pytest.warns(recurrence.SlowLoopWarning) as record:
        for _ in range(3):
            assert "Scan" in ops(odd.scan(odd.project(x), mask)[0])
    messages = {str(w.message) for w in record}
    assert len(messages) == 1 and "odd runs under pytensor.scan" in messages.pop()


def _has_jax():
    try:
        import jax  # noqa: F401
        return True
    except ImportError:
        return False


def test_step_loop_refuses_a_step_that_cannot_run_alone_saying_why():
    odd = ReadsAnOuterVariable(E, H, name="odd2")
    odd.scale = pt.scalar("scale")
    x, mask = pt.tensor3("x"), pt.matrix("mask")
    with pytest.raises(recurrence.UnsupportedStep, match=r"odd2: the step reads scale, which is not its input"):
        recurrence.step_loop(odd, odd.recur, 1, odd.project(x), mask, odd.zeros(x.shape[1]), mode="CVM")
