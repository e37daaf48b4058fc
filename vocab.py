"""Word tokenisation and vocabularies, shared by the prepare scripts and sample.py."""
import re
from collections import Counter

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
SPECIALS = [PAD, UNK, BOS, EOS]
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(4)

# Words (letters, digits, apostrophes inside a word) or single punctuation marks.
_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)*|[^\w\s]", re.UNICODE)


def tokenize(text):
    """Lowercase and split into words with punctuation split off: "Go, now." -> go , now ."""
    return _TOKEN.findall(text.lower())


class Vocab:
    """A list of tokens (`itos`) whose first four entries are the special tokens."""

    def __init__(self, itos):
        itos = list(itos)
        if itos[: len(SPECIALS)] != SPECIALS:
            raise ValueError(f"a vocabulary must start with {SPECIALS}, got {itos[:4]}")
        if len(set(itos)) != len(itos):
            dup = next(w for w, n in Counter(itos).items() if n > 1)
            raise ValueError(f"duplicate token {dup!r} in vocabulary")
        self.itos = itos
        self.stoi = {w: i for i, w in enumerate(itos)}

    @classmethod
    def build(cls, token_lists, max_size):
        """The `max_size` most frequent tokens (specials included), ties broken by token."""
        counts = Counter(t for tokens in token_lists for t in tokens)
        ranked = sorted(counts, key=lambda w: (-counts[w], w))
        words = [w for w in ranked if w not in SPECIALS][: max(0, max_size - len(SPECIALS))]
        return cls(SPECIALS + words)

    def __len__(self):
        return len(self.itos)

    def encode(self, tokens):
        """Token strings -> ids, unknown words -> UNK_ID."""
        return [self.stoi.get(t, UNK_ID) for t in tokens]

    def decode(self, ids):
        """Ids -> a string, stopping at EOS and skipping PAD and BOS."""
        words = []
        for i in ids:
            i = int(i)
            if i == EOS_ID:
                break
            if i not in (PAD_ID, BOS_ID):
                words.append(self.itos[i])
        return " ".join(words)
