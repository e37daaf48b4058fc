"""The feed-forward modules against numpy: FF over several inputs, Embedding and its tied copy,
TiedOutput, Dropout's masks (fresh per call, one per sequence when locked)."""
import numpy as np
import pytest

import layers
import modes
import pytensor
import pytensor.tensor as pt
from helpers import randomize, values

MODE = modes.compile_mode("CVM")
I, H, B, T = 5, 7, 3, 6


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(0)


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


def test_embedding_tied_copy_and_tied_output_read_one_table():
    embed = layers.Embedding(6, 4, "tgt_embed", np.random.default_rng(1))
    tied = layers.Embedding.tied(embed, "src_embed")
    out = layers.TiedOutput(embed)
    assert tied.params == [] and [p.name for p in out.params] == ["ffout.b"]
    out.b.set_value(np.arange(6, dtype="float32"))
    ids, x = pt.imatrix("ids"), pt.matrix("x")
    f = pytensor.function([ids, x], [embed(ids), tied(ids), out(x)], mode=MODE)
    table = embed.W.get_value()
    idv, xv = np.array([[0, 5], [2, 2]], "int32"), np.ones((2, 4), "float32")
    looked, looked_tied, logits = f(idv, xv)
    np.testing.assert_array_equal(looked, table[idv])
    np.testing.assert_array_equal(looked_tied, table[idv])
    np.testing.assert_allclose(logits, xv @ table.T + np.arange(6), rtol=1e-6)


def test_dropout_draws_new_masks_each_call_and_locked_ones_per_sequence():
    dropout = layers.Dropout(seed=3)
    x = pt.tensor3("x")  # (T, B, D)
    dropout.begin()
    plain, locked = dropout(x, 0.5), dropout.locked(x, 0.5)
    f = pytensor.function([x], [plain, locked], updates=dropout.updates(), mode=MODE)
    ones = np.ones((4, 3, 50), "float32")
    first, second = f(ones), f(ones)
    for masks in first + second:
        assert set(np.unique(masks)) <= {0.0, 2.0}  # kept units scaled by 1 / (1 - rate)
        assert 0.3 < np.mean(masks == 0) < 0.7
    assert not np.array_equal(first[0], second[0]) and not np.array_equal(first[1], second[1])
    assert not np.array_equal(first[0][0], first[0][1])  # plain: a new mask at each timestep
    assert all(np.array_equal(first[1][0], first[1][t]) for t in range(4))  # locked: one per sequence


def test_the_original_examples_names_are_the_cells():
    """`layers.GRU(inputSize, hiddenSize)` as the original example's initModules() writes it."""
    import cells

    assert layers.GRU is cells.GRU and layers.LSTM is cells.LSTM
