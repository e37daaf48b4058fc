"""The autoencoder's network (autoencoder_model.py): its loss gradient against finite
differences, and padding to a time-major batch with its mask."""
import os
import sys

import numpy as np
import pytensor
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoencoder import NDS2SAEFactory
from autoencoder_model import check_sequences, pad
from helpers import ROOT

sys.path.insert(0, os.path.join(ROOT, "data", "sincos"))
from sincos import make_sequences  # noqa: E402


def test_gradient_matches_finite_differences():
    factory = NDS2SAEFactory()
    factory.input_dim, factory.output_dim, factory.layer_sizes, factory.symmetric = 2, 1, [6, 4], True
    encoder = factory.build()
    x, x_mask, y, y_mask = encoder._inputs()
    loss = encoder._loss(x, x_mask, y, y_mask)[0]
    param = encoder.decoder[1].U
    f = pytensor.function([x, x_mask, y, y_mask], [loss, pytensor.grad(loss, param)])
    in_seq, out_seq = make_sequences(4, seed=6, min_len=3, max_len=6)
    batch = (*pad(in_seq), *pad(out_seq))
    _, grad = f(*batch)
    value = param.get_value()
    rng = np.random.default_rng(0)
    for _ in range(5):
        i, j = rng.integers(value.shape[0]), rng.integers(value.shape[1])
        eps = 1e-2
        shifted = []
        for sign in (1, -1):
            v = value.copy()
            v[i, j] += sign * eps
            param.set_value(v)
            shifted.append(float(f(*batch)[0]))
        param.set_value(value)
        numeric = (shifted[0] - shifted[1]) / (2 * eps)
        assert numeric == pytest.approx(float(grad[i, j]), rel=0.05, abs=2e-4)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 12), min_size=1, max_size=6), st.integers(1, 4))
def test_pad_keeps_every_sequence_and_masks_the_rest(lengths, dim):
    rng = np.random.default_rng(sum(lengths))
    seqs = check_sequences([rng.standard_normal((n, dim)) for n in lengths], dim, "x")
    x, mask = pad(seqs)
    assert x.shape == (max(lengths), len(lengths), dim)
    np.testing.assert_array_equal(mask.sum(0), lengths)
    for b, seq in enumerate(seqs):
        np.testing.assert_array_equal(x[: len(seq), b], seq)
        assert not x[len(seq) :, b].any()
