"""decode.py: the no-repeat-n-gram guard, step-by-step decoding that follows the scan, top-k
and nucleus sampling, the one <unk> rule, n-best beams, and the beam's top-k."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataset import pad_batch
from decode import banned_tokens, beam_search, generate, sampling_probabilities, step_decode, top_k_columns
from model import Model, ModelConfig
from vocab import UNK_ID

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


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 6), st.integers(1, 300), st.integers(1, 8), st.integers(1, 40), st.integers(0, 2**31),
       st.booleans())
def test_top_k_columns_are_the_k_largest_of_each_row(R, V, k, block, seed, ties):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 4, (R, V)).astype(float) if ties else rng.standard_normal((R, V))
    x[rng.random((R, V)) < 0.2] = -np.inf  # banned tokens
    cols = top_k_columns(x, k, block)
    k = min(k, V)
    assert cols.shape == (R, k) and all(len(set(row)) == k for row in cols.tolist())
    # the same values as a full sort's k largest (which of equal values is free)
    np.testing.assert_array_equal(np.sort(np.take_along_axis(x, cols, axis=1), axis=1),
                                  np.sort(x, axis=1)[:, V - k :])


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


def test_top_k_one_and_a_tiny_nucleus_are_greedy(model, src):
    greedy, _ = generate(model, src, max_len=12)
    for how in ({"top_k": 1}, {"top_p": 1e-6}):
        sampled, _ = generate(model, src, max_len=12, temperature=1.0, rng=np.random.default_rng(2), **how)
        assert sampled == greedy, how


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-5, 5, allow_subnormal=False), min_size=3, max_size=12),
       st.floats(0.05, 1.0, allow_subnormal=False), st.integers(0, 5))
def test_no_token_outside_the_nucleus_or_the_top_k_is_drawn(logits, top_p, top_k):
    """sampling_probabilities keeps the fewest most probable tokens whose mass reaches
    top_p (and at most top_k of them); every other token has probability 0."""
    scores = np.array([logits], dtype=np.float64)
    probs = sampling_probabilities(scores, 1.0, top_k, top_p)[0]
    full = np.exp(scores[0] - scores[0].max())
    full /= full.sum()
    order = np.argsort(-full, kind="stable")
    needed = int(np.searchsorted(np.cumsum(full[order]), top_p) + 1)  # the nucleus' size
    allowed = set(order[: min(needed, top_k) if top_k else needed].tolist())
    assert {i for i in range(len(probs)) if probs[i] > 0} <= allowed
    assert probs[order[0]] > 0 and probs.sum() == pytest.approx(1.0)


@pytest.fixture(scope="module")
def unk_model():
    """A model whose most probable next word is always <unk>."""
    m = Model(ModelConfig(embed_size=6, hidden_size=8, src_vocab_size=V, tgt_vocab_size=V, init_seed=4))
    b = m.modules["ffout"].b.get_value()
    b[UNK_ID] = 50.0
    m.modules["ffout"].b.set_value(b)
    return m


def test_one_rule_for_unk_in_every_decoder(unk_model, src):
    """<unk> is banned by default in greedy, sampled and beam decoding alike, so a beam of 1
    is greedy decoding; with unk_penalty=0 every decoder may emit it."""
    greedy, _ = generate(unk_model, src, max_len=8)
    beam, _ = beam_search(unk_model, src, beam_size=1, max_len=8)
    sampled, _ = generate(unk_model, src, max_len=8, temperature=1.0, top_p=0.9)
    assert greedy == beam and not any(UNK_ID in out for out in greedy + sampled)
    allowed, _ = generate(unk_model, src, max_len=8, unk_penalty=0.0)
    beam_allowed, _ = beam_search(unk_model, src, beam_size=1, max_len=8, unk_penalty=0.0)
    assert allowed == beam_allowed and all(out and set(out) == {UNK_ID} for out in allowed)


def test_nbest_lists_are_sorted_and_distinct(model, src):
    outputs, scores = beam_search(model, src, beam_size=4, max_len=6, nbest=3)
    best, best_scores = beam_search(model, src, beam_size=4, max_len=6)
    for outs, sc, top, top_score in zip(outputs, scores, best, best_scores):
        assert len(outs) == 3 and outs[0] == top and sc[0] == pytest.approx(top_score)
        assert len({tuple(o) for o in outs}) == 3
        normalised = [s / (len(o) + (len(o) < 6)) for o, s in zip(outs, sc)]  # length counts EOS
        assert normalised == sorted(normalised, reverse=True)
    with pytest.raises(ValueError, match="nbest must be between 1 and beam_size"):
        beam_search(model, src, beam_size=2, nbest=3)
