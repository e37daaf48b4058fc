"""Attention, the bidirectional stacked encoder, and beam search."""
import numpy as np
import pytest

import pytensor
import pytensor.tensor as pt
from attention import ATTENTIONS, attention_class
from checkpoint import generator_state
from dataset import make_batch
from decode import beam_search
from model import Model, ModelConfig
from vocab import EOS_ID, PAD_ID

V = 9  # 4 specials + 5 words


def tiny(**kw):
    cfg = ModelConfig(embed_size=6, hidden_size=5, src_vocab_size=V, tgt_vocab_size=V,
                      bidirectional=True, attention="bahdanau", encoder_layers=2, **kw)
    return Model(cfg)


@pytest.fixture(scope="module")
def model():
    return tiny()


def random_pairs(n, seed, max_len=6):
    rng = np.random.default_rng(seed)
    return [(rng.integers(4, V, rng.integers(1, max_len + 1)), rng.integers(4, V, rng.integers(1, max_len + 1)))
            for _ in range(n)]


@pytest.mark.parametrize("kind", ["bahdanau", "luong", "coverage"])
def test_attention_matches_numpy_and_masks_padding(kind):
    """Each kind's scores, weights and context, and coverage's next state, against numpy."""
    rng = np.random.default_rng(0)
    Ts, B, Hq, C = 5, 3, 4, 6
    att = ATTENTIONS[kind](Hq, C, 7, name="att", rng=rng)
    q, ann, mask, cov = pt.matrix("q"), pt.tensor3("ann"), pt.matrix("mask"), pt.matrix("cov")
    state = [cov] if kind == "coverage" else []
    f = pytensor.function([q, ann, mask, *state], att(q, att.keys(ann), ann, mask, *state))
    query = rng.standard_normal((B, Hq)).astype("float32")
    annotations = rng.standard_normal((Ts, B, C)).astype("float32")
    coverage = rng.uniform(0, 2, (B, Ts)).astype("float32")
    lengths = [5, 2, 1]
    src_mask = (np.arange(Ts)[:, None] < np.array(lengths)[None]).astype("float32")
    ctx, weights, *new_state = f(query, annotations, src_mask, *([coverage] if state else []))

    p = {x.name.split(".")[-1]: x.get_value() for x in att.params}
    if kind == "bahdanau":
        scores = np.tanh(query @ p["W"] + annotations @ p["U"] + p["b"]) @ p["v"]  # (Ts, B)
    elif kind == "coverage":
        features = query @ p["W"] + annotations @ p["U"] + p["b"] + coverage.T[:, :, None] * p["w_cov"]
        scores = np.tanh(features) @ p["v"]
        np.testing.assert_allclose(new_state[0], coverage + weights.T, rtol=1e-6)
    else:
        scores = np.einsum("tbc,bc->tb", annotations, query @ p["W"])
    for b, n in enumerate(lengths):
        e = np.exp(scores[:n, b] - scores[:n, b].max())
        np.testing.assert_allclose(weights[:n, b], e / e.sum(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ctx[b], (weights[:n, b, None] * annotations[:n, b]).sum(0), rtol=1e-5)
    np.testing.assert_allclose(weights.sum(0), 1.0, rtol=1e-6)
    assert np.all(weights[src_mask == 0] == 0.0)  # exactly 0, not just small


def test_padding_and_what_sits_there_do_not_change_the_loss(model):
    f = model.compile_eval()
    pairs = random_pairs(4, seed=1)
    pairs[0] = (pairs[0][0][:2], pairs[0][1])  # a short source among longer ones
    together = [float(f(*make_batch([pair]))[0]) for pair in pairs]
    batch_nll, _ = f(*make_batch(pairs))
    assert float(batch_nll) == pytest.approx(sum(together), rel=1e-5)
    # What the PAD row embeds must not matter: padded positions are masked everywhere.
    embed = model.modules["src_embed"].W
    original = embed.get_value()
    try:
        changed = original.copy()
        changed[PAD_ID] = 50.0
        embed.set_value(changed)
        assert float(f(*make_batch(pairs))[0]) == pytest.approx(float(batch_nll), rel=1e-6)
    finally:
        embed.set_value(original)


def test_gradient_through_attention_matches_finite_differences(model):
    src, tgt = pt.imatrix("src"), pt.imatrix("tgt")
    loss, _ = model.loss(src, tgt)
    params = [model.modules["decoder"].attention.W, model.modules["decoder"].attention.v,
              model.modules["encoder1_bwd"].U]
    f = pytensor.function([src, tgt], [loss, *pytensor.grad(loss, params)], mode=model.mode)
    batch = make_batch(random_pairs(3, seed=2))
    _, *grads = f(*batch)
    rng = np.random.default_rng(0)
    for param, grad in zip(params, grads):
        value = param.get_value()
        for _ in range(3):
            index = tuple(rng.integers(n) for n in value.shape)
            shifted = []
            for sign in (1, -1):
                v = value.copy()
                v[index] += sign * 1e-2
                param.set_value(v)
                shifted.append(float(f(*batch)[0]))
            param.set_value(value)
            numeric = (shifted[0] - shifted[1]) / 2e-2
            assert numeric == pytest.approx(float(grad[index]), rel=0.05, abs=1e-4), param.name


def greedy(model, src, max_len):
    ys, logps = model.decode(src, max_len=max_len)
    return [[int(w) for w in row if w not in (PAD_ID, EOS_ID)] for row in ys], logps


def test_beam_size_one_is_greedy(model):
    src, _ = make_batch(random_pairs(6, seed=3))
    outputs, scores = beam_search(model, src, beam_size=1, max_len=8)
    expected, expected_scores = greedy(model, src, 8)
    assert outputs == expected
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-4, atol=1e-4)


def test_wide_beam_is_exact_search_and_beats_greedy(model):
    """With beam_size >= (V - 2)**max_len nothing is ever pruned, so the beam returns the
    most probable output of at most max_len tokens; its score is >= greedy's."""
    src, _ = make_batch(random_pairs(3, seed=4))
    max_len = 3
    _, exact = beam_search(model, src, beam_size=(V - 2) ** max_len, max_len=max_len, length_norm=0)
    _, greedy_scores = greedy(model, src, max_len)
    assert np.all(exact >= greedy_scores - 1e-5)
    _, narrow = beam_search(model, src, beam_size=3, max_len=max_len, length_norm=0)
    assert np.all(exact >= narrow - 1e-5)


def test_beam_search_is_batched_per_sentence(model):
    """Sentences decoded together give what each gives alone."""
    src_pairs = random_pairs(4, seed=5)
    together, _ = beam_search(model, make_batch(src_pairs)[0], beam_size=3, max_len=6)
    alone = [beam_search(model, make_batch([p])[0], beam_size=3, max_len=6)[0][0] for p in src_pairs]
    assert together == alone


def test_beam_size_must_be_positive(model):
    with pytest.raises(ValueError, match="beam_size must be at least 1"):
        beam_search(model, make_batch(random_pairs(1, seed=6))[0], beam_size=0)


def test_dropout_is_training_only_and_saved(model, tmp_path):
    # Dropout sits between stacked encoder layers; a plain two-layer model compiles fastest.
    dropped = Model(ModelConfig(embed_size=6, hidden_size=5, src_vocab_size=V, tgt_vocab_size=V,
                                encoder_layers=2, dropout=0.5))
    src, tgt = make_batch(random_pairs(4, seed=7))
    ev = dropped.compile_eval()
    assert float(ev(src, tgt)[0]) == float(ev(src, tgt)[0])  # no randomness at inference
    train = dropped.compile_train("sgd", 0.0)
    state_before = generator_state(dropped.dropout.rng)
    losses = [float(train(src, tgt, np.float32(0.0))[0]) for _ in range(2)]  # lr 0: same params
    assert losses[0] != losses[1]  # fresh dropout masks each step
    assert generator_state(dropped.dropout.rng) != state_before
    dropped.save(tmp_path / "d.npz")
    loaded = Model.load(tmp_path / "d.npz")
    assert generator_state(loaded.dropout.rng) == generator_state(dropped.dropout.rng)


USER_ATTENTION = '''
import numpy as np
import pytensor.tensor as pt
import attention


class Recency(attention.Attention):
    """Bahdanau attention with a state: a decaying trace of past weights, subtracted from the
    scores, so that recently attended words are attended less."""
    n_states = 1

    def initial_state(self, annotations, src_mask):
        return [pt.zeros_like(src_mask.T)]

    def __call__(self, query, keys, annotations, src_mask, trace):
        weights = attention.masked_softmax(self.scores(query, keys) - trace.T, src_mask)
        return attention.context(weights, annotations), weights, np.float32(0.5) * trace + weights.T


class TwoOutputs(attention.Attention):
    n_states = 1

    def initial_state(self, annotations, src_mask):
        return [pt.zeros_like(src_mask.T)]

    def __call__(self, query, keys, annotations, src_mask, trace):
        return super().__call__(query, keys, annotations, src_mask)


class WrongShape(attention.Attention):
    def __call__(self, query, keys, annotations, src_mask):
        ctx, weights = super().__call__(query, keys, annotations, src_mask)
        return ctx, weights.T


class NotAnAttention:
    pass
'''


@pytest.fixture(scope="module")
def user_attention(tmp_path_factory):
    import sys
    folder = tmp_path_factory.mktemp("user_attention")
    (folder / "myattention.py").write_text(USER_ATTENTION)
    sys.path.insert(0, str(folder))
    yield "myattention"
    sys.path.remove(str(folder))


def test_a_users_stateful_attention_by_module_and_class_trains_and_decodes(user_attention):
    """--attention=myattention:Recency: a stateful attention in the user's own file, on the
    fast loop, training and decoding (greedy and beam), with no file of the project changed."""
    import warnings

    import recurrence
    from attention import check_attention
    from helpers import batch, tiny_config

    check_attention(attention_class(f"{user_attention}:Recency"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", recurrence.SlowLoopWarning)
        model = Model(tiny_config(attention=f"{user_attention}:Recency"))
        step = model.compile_train("adam", 1.0)
    assert "StepLoop" in {type(n.op).__name__ for n in step.maker.fgraph.apply_nodes}
    src, tgt = batch(3)
    losses = [float(step(src, tgt, np.float32(0.05))[0]) for _ in range(12)]
    assert losses[-1] < losses[0] - 0.3
    ys, _ = model.decode(src, max_len=5)
    outputs, _ = beam_search(model, src, beam_size=1, max_len=5)
    assert outputs == [[int(w) for w in row if w not in (PAD_ID, EOS_ID)] for row in ys]


def test_a_users_broken_attention_is_one_line(user_attention):
    from attention import check_attention

    m = user_attention
    with pytest.raises(ValueError, match=r"^TwoOutputs: n_states is 1, but initial_state gave 1 state\(s\) and "
                                         r"__call__ returned 2 outputs; expected \(ctx, weights, \*new_state\): 3$"):
        check_attention(attention_class(f"{m}:TwoOutputs"))
    with pytest.raises(ValueError, match=r"^WrongShape returned weights of shape \(2, 3\); expected \(3, 2\)"):
        check_attention(attention_class(f"{m}:WrongShape"))
    with pytest.raises(ValueError, match=r"^attention '.*:NotAnAttention' is not a subclass of attention.Attention$"):
        attention_class(f"{m}:NotAnAttention")
    with pytest.raises(ValueError, match=r"^myattention has no Missing$"):
        attention_class(f"{m}:Missing")
    with pytest.raises(ValueError, match=r"^importing no_such_module failed: ModuleNotFoundError"):
        attention_class("no_such_module:Attention")
    with pytest.raises(ValueError, match=r"^unknown attention 'cover'; choose one of bahdanau, coverage, luong"):
        attention_class("cover")
