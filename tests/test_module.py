"""What every module shares (module.py): named float32 parameters, `getUpdates(cost, lr)` as
one SGD step checked against the update computed by hand, frozen modules and `lr_scale`, the
initialisers, and the lookup of a module class by name."""
import numpy as np
import pytest

import layers
import modes
import pytensor
import pytensor.tensor as pt
from module import Module, affine, named_class, orthogonal

MODE = modes.compile_mode("CVM")


def test_get_updates_is_one_sgd_step_computed_by_hand():
    """cost = sum((x W + b)^2) over a batch: dW = 2 x^T (x W + b), db = 2 sum_rows(x W + b),
    and getUpdates moves each by -lr times that, nothing else."""
    ff = layers.FF(3, 2, "linear")
    W, b = np.arange(6, dtype="float32").reshape(3, 2) / 10, np.array([0.5, -1.0], "float32")
    ff.W.set_value(W)
    ff.b.set_value(b)
    x = pt.matrix("x")
    lr = np.float32(0.1)
    updates = ff.getUpdates(pt.sum(ff(x) ** 2), lr)
    assert [p for p, _ in updates] == ff.params
    xv = np.array([[1.0, 2.0, 3.0], [0.0, -1.0, 1.0]], "float32")
    pytensor.function([x], [], updates=updates, mode=MODE)(xv)
    y = xv @ W + b
    np.testing.assert_allclose(ff.W.get_value(), W - lr * 2 * xv.T @ y, rtol=1e-6)
    np.testing.assert_allclose(ff.b.get_value(), b - lr * 2 * y.sum(axis=0), rtol=1e-6)


def test_frozen_modules_give_no_updates_and_lr_scale_scales_the_step():
    x = pt.vector("x")
    ff = layers.FF(2, 1, "linear")
    ff.frozen = True
    assert ff.getUpdates(pt.sum(ff(x)), np.float32(1.0)) == []
    ff.frozen, ff.lr_scale = False, 0.25
    before = ff.b.get_value().copy()
    pytensor.function([x], [], updates=ff.getUpdates(pt.sum(ff(x)), np.float32(1.0)), mode=MODE)(np.ones(2, "float32"))
    np.testing.assert_allclose(ff.b.get_value(), before - 0.25)  # d sum / db = 1


def test_params_are_named_float32_shared_variables():
    module = Module("enc")
    p = module.add_param("W", np.ones((2, 3)))
    assert p.name == "enc.W" and p.dtype == "float32" and module.params == [p]


def test_orthogonal_init_is_orthogonal_and_affine_splits_its_inputs():
    q = orthogonal(np.random.default_rng(0), 5)
    np.testing.assert_allclose(q @ q.T, np.eye(5), atol=1e-10)
    a, c = pt.matrix("a"), pt.matrix("c")
    W = pt.constant(np.arange(10, dtype="float32").reshape(5, 2))
    f = pytensor.function([a, c], affine([a, c], [3, 2], W, np.float32(1.0)), mode=MODE)
    av, cv = np.ones((1, 3), "float32"), np.full((1, 2), 2.0, "float32")
    np.testing.assert_allclose(f(av, cv), np.hstack([av, cv]) @ W.data + 1.0)


def test_named_class_finds_registered_names_and_module_colon_class():
    assert named_class("ff", {"ff": layers.FF}, Module, "layer") is layers.FF
    assert named_class("layers:Embedding", {}, Module, "layer") is layers.Embedding
    with pytest.raises(ValueError, match="unknown layer 'nope'; choose one of ff, or module:Class"):
        named_class("nope", {"ff": layers.FF}, Module, "layer")
    with pytest.raises(ValueError, match="layers has no Missing"):
        named_class("layers:Missing", {}, Module, "layer")
    with pytest.raises(ValueError, match=r"layer 'layers:Dropout' is not a subclass of module.Module"):
        named_class("layers:Dropout", {}, Module, "layer")
