"""Text <-> ids: word tokenisation or SentencePiece subwords, and the vocabulary, shared by
the prepare scripts, train.py, sample.py and evaluate.py."""
import re
from collections import Counter

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
SPECIALS = [PAD, UNK, BOS, EOS]
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(4)

# Words (letters, digits, apostrophes inside a word) or single punctuation marks.
_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)*|[^\w\s]", re.UNICODE)


# Detokenising word tokens: no space before closing punctuation or after opening brackets;
# hyphens join their neighbours; quotes open and close in turn.
_NO_SPACE_BEFORE = set(".,;:!?)]}%")
_NO_SPACE_AFTER = set("([{$")
_JOINERS = {"-", "/"}
_SENTENCE_START = re.compile(r"((?:^|[.!?][\"')\]]*\s+)[\"'(]?)([a-z])")


def tokenize(text):
    """Lowercase and split into words with punctuation split off: "Go, now." -> go , now ."""
    return _TOKEN.findall(text.lower())


def detokenize(tokens):
    """Word tokens -> readable text: punctuation attached, sentences and "I" capitalised.
    "and i said , go ." -> "And I said, go." (the case the tokeniser dropped is guessed).
    A hyphen or slash joins its neighbours ("well - known" -> "well-known"); double quotes
    open and close in turn, attached to the text they quote. A single quote does the same
    when an even number of them is left to come (this one included); otherwise it ends the
    word before it ("the brethren ' house" -> "the brethren' house", a plural possessive)."""
    out, glue_next, open_quote = "", False, {'"': False, "'": False}
    singles_left = sum(t == "'" for t in tokens)
    for t in tokens:
        attach_left = t[0] in _NO_SPACE_BEFORE or t in _JOINERS
        if t in open_quote:
            if t == "'":
                opens = not open_quote[t] and singles_left % 2 == 0
                singles_left -= 1
            else:
                opens = not open_quote[t]
            open_quote[t], attach_left = opens, not opens
        if out and not attach_left and not glue_next and out[-1] not in _NO_SPACE_AFTER:
            out += " "
        out += "I" if t == "i" else t
        glue_next = t in _JOINERS or (t in open_quote and open_quote[t])
    return _SENTENCE_START.sub(lambda m: m.group(1) + m.group(2).upper(), out)


def sentencepiece_processor(model_proto):
    import sentencepiece

    return sentencepiece.SentencePieceProcessor(model_proto=bytes(model_proto))


class Vocab:
    """A list of tokens (`itos`) whose first four entries are the special tokens, and how
    text becomes those tokens: lowercased words (vocab.tokenize), or the pieces of a
    SentencePiece model when `spm` holds its serialized model (bytes)."""

    def __init__(self, itos, spm=None):
        itos = list(itos)
        if itos[: len(SPECIALS)] != SPECIALS:
            raise ValueError(f"a vocabulary must start with {SPECIALS}, got {itos[:4]}")
        if len(set(itos)) != len(itos):
            dup = next(w for w, n in Counter(itos).items() if n > 1)
            raise ValueError(f"duplicate token {dup!r} in vocabulary")
        self.itos = itos
        self.stoi = {w: i for i, w in enumerate(itos)}
        self.spm = None if spm is None else bytes(spm)
        self._processor = None if spm is None else sentencepiece_processor(self.spm)
        if self._processor is not None and self._processor.get_piece_size() != len(itos):
            raise ValueError(f"the SentencePiece model has {self._processor.get_piece_size()} pieces, "
                             f"the vocabulary {len(itos)}")

    def __eq__(self, other):
        return isinstance(other, Vocab) and self.itos == other.itos and self.spm == other.spm

    __hash__ = None

    @property
    def kind(self):
        return "word" if self.spm is None else "sentencepiece"

    def tokens(self, text):
        """Text -> the token strings this vocabulary encodes."""
        if self._processor is None:
            return tokenize(text)
        return self._processor.encode(text, out_type=str)

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

    def _words(self, ids):
        words = []
        for i in ids:
            i = int(i)
            if i == EOS_ID:
                break
            if i not in (PAD_ID, BOS_ID):
                words.append(self.itos[i])
        return words

    def decode(self, ids):
        """Ids -> a string, stopping at EOS and skipping PAD and BOS: word tokens joined by
        spaces (what BLEU is scored on), or a SentencePiece model's text."""
        words = self._words(ids)
        return " ".join(words) if self._processor is None else self._processor.decode(words)

    def text(self, ids):
        """Ids -> text for people to read (word tokens detokenised)."""
        return detokenize(self._words(ids)) if self._processor is None else self.decode(ids)
