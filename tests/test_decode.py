"""decode.py: the no-repeat-n-gram guard, and step-by-step decoding that follows the scan."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataset import pad_batch
from decode import banned_tokens, generate, step_decode
from model import Model, ModelConfig

V = 9  # 4 specials + 5 words: an untrained model loops, which the guard must stop


def has_repeat(tokens, n):
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) < len(grams)


@pytest.fixture(scope="module")
def model():
    return Model(ModelConfig(embed_size=6, hidden_size=8, src_vocab_size=V, tgt_vocab_size=V, init_seed=3))


@pytest.fixture(scope="module")
def src():
    rng = np.random.default_rng(0)
    return pad_batch([list(rng.integers(4, V, rng.integers(2, 7))) for _ in range(6)])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(4, 8), max_size=12), st.integers(4, 8), st.integers(1, 4))
def test_banned_tokens_are_exactly_those_that_repeat_an_ngram(tokens, token, n):
    if has_repeat(tokens, n):
        return  # the guard keeps outputs free of repeats, so only those are extended
    assert (token in banned_tokens(tokens, n)) == has_repeat(tokens + [token], n)


def test_without_the_guard_step_decoding_is_the_scan(model, src):
    ys, logps = model.decode(src, max_len=12)
    outs, step_logps = step_decode(model, src, max_len=12)
    assert outs == generate(model, src, max_len=12)[0]
    np.testing.assert_allclose(step_logps, logps, rtol=1e-5, atol=1e-5)
    sampled, _ = model.decode(src, max_len=12, temperature=0.9, rng=np.random.default_rng(5))
    outs, _ = step_decode(model, src, max_len=12, temperature=0.9, rng=np.random.default_rng(5))
    assert outs == generate(model, src, max_len=12, temperature=0.9, rng=np.random.default_rng(5))[0]


@pytest.mark.parametrize("how", [{}, {"temperature": 1.0}, {"beam_size": 3}])
def test_the_guard_removes_every_repeated_ngram(model, src, how):
    plain, _ = generate(model, src, max_len=20, rng=np.random.default_rng(1), **how)
    guarded, _ = generate(model, src, max_len=20, rng=np.random.default_rng(1), no_repeat_ngram_size=2, **how)
    assert any(has_repeat(out, 2) for out in plain)  # the untrained model loops ...
    assert not any(has_repeat(out, 2) for out in guarded)  # ... and the guard stops it
