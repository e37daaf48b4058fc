"""The optimizers against their update rules computed by hand, clipping, the non-finite guard,
and the learning-rate schedules (optim.py)."""
import math

import numpy as np
import pytest

import modes
import optim
import pytensor
import pytensor.tensor as pt

MODE = modes.compile_mode("CVM")


def run_updates(updates):
    pytensor.function([], [], updates=updates, mode=MODE)()


def test_sgd_and_two_adam_steps_follow_their_rules():
    g = np.array([0.5, -2.0], "float32")
    p = pytensor.shared(np.array([1.0, 1.0], "float32"), name="p")
    run_updates(optim.sgd([p], [pt.constant(g)], np.float32(0.1)))
    np.testing.assert_allclose(p.get_value(), [1.0 - 0.05, 1.0 + 0.2], rtol=1e-6)

    q = pytensor.shared(np.zeros(2, "float32"), name="q")
    grad = pt.vector("g")
    step = pytensor.function([grad], [], updates=optim.adam([q], [grad], np.float32(0.01), owner="q"), mode=MODE)
    m = v = want = np.zeros(2)
    for t, gv in enumerate([g, 3 * g], start=1):
        step(gv)
        m, v = 0.9 * m + 0.1 * gv, 0.999 * v + 0.001 * gv**2
        m_hat, v_hat = m / (1 - 0.9**t), v / (1 - 0.999**t)
        want = want - 0.01 * m_hat / (np.sqrt(v_hat) + 1e-8 / math.sqrt(1 - 0.999**t))
        np.testing.assert_allclose(q.get_value(), want, rtol=1e-5)


def test_clip_by_global_norm():
    grads = [pt.constant(np.array([3.0, 0.0], "float32")), pt.constant(np.array([4.0], "float32"))]
    clipped, norm = optim.clip_by_global_norm(grads, 1.0)
    a, b, n = pytensor.function([], clipped + [norm], mode=MODE)()
    assert n == pytest.approx(5.0)
    assert np.sqrt(np.sum(a**2) + np.sum(b**2)) == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(a / b[0], [0.75, 0.0], atol=1e-6)  # direction kept


def test_a_non_finite_gradient_leaves_params_and_state_as_they_were():
    p = pytensor.shared(np.ones(2, "float32"), name="p")
    g = pt.vector("g")
    updates, norm, state = optim.guarded_updates([p], [g], 1.0, lambda c: optim.adam([p], c, np.float32(0.1), "p"))
    assert {v.name for v in state} == {"adam.t.p", "adam.m.p", "adam.v.p"}
    step = pytensor.function([g], norm, updates=updates, mode=MODE)
    assert not np.isfinite(step(np.array([np.nan, 1.0], "float32")))
    np.testing.assert_array_equal(p.get_value(), [1.0, 1.0])
    assert all(not np.any(v.get_value()) for v in state)
    step(np.array([1.0, 1.0], "float32"))
    assert not np.allclose(p.get_value(), [1.0, 1.0])


def test_the_global_norm_is_the_float64_norm_to_float32_precision():
    rng = np.random.default_rng(0)
    values = [rng.standard_normal((300, 200)).astype("float32"), rng.standard_normal(7).astype("float32") * 1e3,
              rng.standard_normal((4, 3, 2)).astype("float32")[::-1]]
    norm = pytensor.function([], optim.global_norm([pt.constant(v) for v in values]), mode=MODE)()
    want = math.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in values))
    assert norm == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_one_guarded_update_is_skipped_on_a_non_finite_gradient(bad):
    p = pytensor.shared(np.ones(3, "float32"), name="p")
    g = pt.vector("g")
    updates, norm, state = optim.guarded_updates([p], [g], 0.0, lambda c: optim.sgd([p], c, np.float32(0.5)))
    assert state == []
    step = pytensor.function([g], norm, updates=updates, mode=MODE)
    step(np.array([1.0, bad, 0.0], "float32"))
    np.testing.assert_array_equal(p.get_value(), [1.0, 1.0, 1.0])
    step(np.array([1.0, 2.0, 0.0], "float32"))
    np.testing.assert_allclose(p.get_value(), [0.5, 0.0, 1.0])


def test_schedules():
    assert optim.decayed(1.0, 0.1, 0.0) == 1.0 and optim.decayed(1.0, 0.1, 1.0) == pytest.approx(0.1)
    assert optim.decayed(1.0, 0.1, 0.5) == pytest.approx(0.55)
    assert optim.decayed(1.0, 0.01, 0.5, "exponential") == pytest.approx(0.1)
    assert optim.run_progress(5, 30.0, max_iters=10, max_minutes=2.0) == 0.5
    assert optim.run_progress(5, 90.0, max_iters=10, max_minutes=2.0) == 0.75
    assert [optim.scheduled_lr(1.0, 0.0, 4, s, 0.0, 0.0) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    # after warm-up ending at progress 0.2, the cosine runs over the remaining 0.8
    assert optim.scheduled_lr(1.0, 0.0, 4, 10, 0.6, 0.2) == pytest.approx(0.5)
