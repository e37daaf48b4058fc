"""The compile modes (modes.py): the names a config may use, the project's rewrites (dot
products through numpy, binary adds and multiplies, outer products as one multiply, the
groups of elementwise ops fused), and PyTensor's own modes left as PyTensor builds them."""
import subprocess
import sys

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from pytensor.tensor.elemwise import Elemwise
from pytensor.tensor.math import Dot

import elemwise_kernel
import modes
import thunks
from helpers import ROOT


def ops_of(fn):
    """The ops of a compiled function, unwrapped from thunks.FromPython."""
    return [n.op.op if isinstance(n.op, thunks.FromPython) else n.op for n in fn.maker.fgraph.apply_nodes]


def test_unknown_mode_names_the_choices():
    with pytest.raises(ValueError, match="unknown compile mode 'GPU'; choose one of CVM, NUMBA, FAST_COMPILE, JAX"):
        modes.compile_mode("GPU")
    assert modes.fast_loops("CVM") and not modes.fast_loops("JAX") and not modes.fast_loops("NUMBA")


def test_add_chains_are_binary_and_outer_products_one_multiply():
    a, b, c = pt.matrix("a"), pt.matrix("b"), pt.matrix("c")
    u, v = pt.matrix("u", shape=(None, 1)), pt.matrix("v", shape=(1, None))
    fn = pytensor.function([a, b, c, u, v], [a + b + c, pt.dot(u, v)], mode=modes.compile_mode())
    ops = ops_of(fn)
    assert not any(isinstance(op, Dot) for op in ops)  # (m, 1) @ (1, n) became u * v
    assert all(len(n.inputs) <= 2 for n in fn.maker.fgraph.apply_nodes if isinstance(n.op, (Elemwise, thunks.FromPython)))
    rng = np.random.default_rng(0)
    args = [rng.standard_normal(s).astype("float32") for s in [(2, 3)] * 3 + [(4, 1), (1, 5)]]
    total, outer = fn(*args)
    np.testing.assert_allclose(total, args[0] + args[1] + args[2], rtol=1e-6)
    np.testing.assert_allclose(outer, args[3] @ args[4], rtol=1e-6)


def test_a_scaled_gradient_matmul_is_computed_once():
    """An SGD update with clipping reads a weight gradient twice, scaled by the learning rate
    and in its norm: one matmul serves both (no Dot22Scalar beside the Dot22)."""
    x, dy, w, lr = pt.matrix("x"), pt.matrix("dy"), pt.matrix("w"), pt.scalar("lr")
    g = pt.dot(x.T, dy)
    fn = pytensor.function([x, dy, w, lr], [w - lr * g * pt.minimum(1, 1 / pt.sqrt((g**2).sum()))],
                           mode=modes.compile_mode())
    assert [type(op).__name__ for op in ops_of(fn) if "Dot" in type(op).__name__] == ["Dot22"]
    rng = np.random.default_rng(0)
    a, d, w0 = (rng.standard_normal(s).astype("float32") for s in [(4, 3), (4, 5), (3, 5)])
    grad = a.T @ d
    np.testing.assert_allclose(fn(a, d, w0, np.float32(0.5))[0], w0 - 0.5 * grad * min(1, 1 / np.linalg.norm(grad)),
                               rtol=1e-5)


@pytest.mark.parametrize("blocks, joined", [([(0, 3), (3, 5), (5, 8)], True), ([(0, 3), (5, 8)], False)])
def test_gradient_blocks_tiling_the_columns_become_one_concatenation(blocks, joined):
    """The gradient of a step that slices its gates into column blocks: one Join when the
    blocks cover every column, the increments into zeros otherwise; the same values."""
    x = pt.matrix("x", shape=(None, 8))
    g = pt.sigmoid(x)
    cost = sum(pt.tanh(g[:, a:b] * (k + 1)).sum() for k, (a, b) in enumerate(blocks))
    fn = pytensor.function([x], pytensor.grad(cost, x), mode=modes.compile_mode())
    names = [type(op).__name__ for op in ops_of(fn)]
    assert ("Join" in names, "IncSubtensor" in names) == (joined, not joined), names
    value = np.random.default_rng(0).standard_normal((3, 8)).astype("float32")
    s = 1 / (1 + np.exp(-value))
    expected = np.zeros_like(value)
    for k, (a, b) in enumerate(blocks):
        expected[:, a:b] = (k + 1) * (1 - np.tanh((k + 1) * s[:, a:b]) ** 2) * s[:, a:b] * (1 - s[:, a:b])
    np.testing.assert_allclose(fn(value), expected, rtol=1e-5, atol=1e-6)


def test_a_tensor_vector_product_and_its_gradient_share_one_tanh():
    """Additive attention's scores, dot(tanh(keys + q), v) over (Ts, B, A): the product runs
    on the reshaped tanh, the gradient reads the tanh itself; with the reshape lifted above
    the tanh there were two tanh ops over the whole (Ts, B, A) array at every step."""
    k, v = pt.tensor3("k"), pt.vector("v")
    scores = pt.dot(pt.tanh(k), v)
    fn = pytensor.function([k, v], [scores, pytensor.grad(scores.sum(), k)], mode=modes.compile_mode())
    # (a tanh op, or one in a fused elementwise loop: a line `t<k> = tanhf(...)` of its kernel)
    assert sum(1 if str(op) == "Tanh" else getattr(op, "body", "").count("= tanhf(") for op in ops_of(fn)) == 1
    rng = np.random.default_rng(0)
    kv, vv = rng.standard_normal((3, 2, 4)).astype("float32"), rng.standard_normal(4).astype("float32")
    got_scores, got_grad = fn(kv, vv)
    np.testing.assert_allclose(got_scores, np.tanh(kv) @ vv, rtol=1e-5)
    np.testing.assert_allclose(got_grad, (1 - np.tanh(kv) ** 2) * vv, rtol=1e-5)


def test_the_gradient_of_a_tensor_vector_product_is_one_elementwise_loop():
    """The (Ts * B, A) outer product d scores x v and its reshape to (Ts, B, A) become one
    broadcast product, fused with the tanh's gradient that reads it; a reshape that would
    order the rows otherwise stops at the shape check instead of computing something else."""
    k, v = pt.tensor3("k"), pt.vector("v")
    fn = pytensor.function([k, v], pytensor.grad(pt.dot(pt.tanh(k), v).sum(), k), mode=modes.compile_mode())
    assert not [n for n in fn.maker.fgraph.apply_nodes if "Reshape" in str(n.op) and n.outputs[0].ndim == 3]
    assert sum(isinstance(op, elemwise_kernel.FusedElemwise) for op in ops_of(fn)) == 1
    rng = np.random.default_rng(0)
    kv, vv = rng.standard_normal((3, 2, 4)).astype("float32"), rng.standard_normal(4).astype("float32")
    np.testing.assert_allclose(fn(kv, vv), (1 - np.tanh(kv) ** 2) * vv, rtol=1e-5)
    s, r, shape = pt.matrix("s"), pt.row("r"), pt.lvector("shape")
    product = pytensor.function([s, r, shape], pt.reshape(s.ravel()[:, None] * r, shape, ndim=3),
                                mode=modes.compile_mode())
    sv, rv = rng.standard_normal((2, 3)).astype("float32"), rng.standard_normal((1, 4)).astype("float32")
    np.testing.assert_allclose(product(sv, rv, [2, 3, 4]), sv[..., None] * rv[0], rtol=1e-6)
    with pytest.raises(AssertionError, match="SpecifyShape"):
        product(sv, rv, [3, 2, 4])


def test_other_modes_are_unchanged():
    """After the project's mode has compiled a function, PyTensor's own CVM mode still
    compiles an elementwise op to C, and fuses."""
    x = pt.matrix("x")
    pytensor.function([x], pt.tanh(x) * 2 + 1, mode=modes.compile_mode())
    fn = pytensor.function([x], pt.tanh(x) * 2 + 1, mode=pytensor.compile.mode.get_mode("CVM"))
    assert any("Composite" in str(n.op) for n in fn.vm.nodes)
    assert all(hasattr(t, "cthunk") for n, t in zip(fn.vm.nodes, fn.vm.thunks) if isinstance(n.op, Elemwise))
    np.testing.assert_allclose(fn(np.zeros((2, 2), "float32")), np.ones((2, 2)))


def test_mode_jax_without_jax_is_one_line():
    """Where JAX is not installed, --mode=JAX says how to install it."""
    code = ("import sys; sys.modules['jax_kernels'] = None; sys.path.insert(0, '.'); import modes\n"
            "from configurator import ConfigError\n"
            "try:\n    modes.compile_mode('JAX')\nexcept ConfigError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert "requirements-jax.txt" in out.stdout and len(out.stdout.strip().splitlines()) == 1, out.stderr


def test_a_path_through_another_op_keeps_ops_apart():
    # exp(x) feeds a sum that the product reads: exp and the product in one loop would make
    # a cycle, so the result must still be right with the groups split.
    x = pt.matrix("x")
    e = pt.exp(x)
    f = pytensor.function([x], e * e.sum(axis=1, keepdims=True) + pt.tanh(x), mode=modes.compile_mode())
    X = np.random.default_rng(2).standard_normal((3, 4)).astype("float32")
    E = np.exp(X.astype(np.float64))
    np.testing.assert_allclose(f(X), E * E.sum(axis=1, keepdims=True) + np.tanh(X), rtol=2e-6)


def test_slices_of_an_elementwise_output_are_computed_slice_by_slice():
    x, h = pt.matrix("x"), pt.matrix("h")
    z = x + h  # (B, 2H), read only through two column blocks
    f = pytensor.function([x, h], pt.tanh(z[:, :3]) * pt.sigmoid(z[:, 3:]), mode=modes.compile_mode())
    fused = [op for op in ops_of(f) if isinstance(op, elemwise_kernel.FusedElemwise)]
    assert len(fused) == 1 and not [op for op in ops_of(f) if isinstance(op, Elemwise)]
    rng = np.random.default_rng(3)
    X, H = (rng.standard_normal((4, 6)).astype("float32") for _ in range(2))
    Z = X.astype(np.float64) + H
    np.testing.assert_allclose(f(X, H), np.tanh(Z[:, :3]) * sigmoid(Z[:, 3:]), rtol=2e-6)


def sigmoid(x):
    return 1 / (1 + np.exp(-x))
