"""Tokenisation and vocabularies (vocab.py)."""
import pytest

from vocab import BOS_ID, EOS_ID, SPECIALS, UNK_ID, Vocab, tokenize


def test_tokenize_lowercases_and_splits_punctuation():
    assert tokenize("And God said, Let there be light: and there was light.") == [
        "and", "god", "said", ",", "let", "there", "be", "light", ":", "and", "there", "was", "light", ".",
    ]
    assert tokenize("the LORD's house; ¶ Jesus wept.") == ["the", "lord's", "house", ";", "¶", "jesus", "wept", "."]


def test_vocab_caps_size_and_maps_unknown_words():
    vocab = Vocab.build([["a", "b", "a"], ["c", "a", "b"]], max_size=len(SPECIALS) + 2)
    assert vocab.itos == SPECIALS + ["a", "b"]
    assert vocab.encode(["a", "c", "zzz"]) == [4, UNK_ID, UNK_ID]
    assert vocab.decode([BOS_ID, 4, 5, EOS_ID, 4]) == "a b"
    with pytest.raises(ValueError, match="must start with"):
        Vocab(["a", "b"])
