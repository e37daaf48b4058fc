"""Your own text -> a dataset for train.py, in one command.

Next-sentence pairs (the next-sentence task of Cho et al.'s example) from plain text:
    python data/text/prepare.py --input book.txt [more.txt ...] --out_dir data/mybook
    python train.py --dataset=mybook --max_minutes=480
    python sample.py --dataset=mybook --start="It was a dark and stormy night."
Parallel text (translation), line-aligned files or one "source<TAB>target" pair per line:
    python data/text/prepare.py --src en.txt --tgt es.txt --out_dir data/en_es
    python data/text/prepare.py --pairs_tsv pairs.tsv --out_dir data/en_es

Sentences: --split=prose (the default) cuts running text into sentences with pysbd, a
rule-based English segmenter in pure Python (abbreviations such as "Mr." and "e.g." do not end
a sentence; nothing is downloaded at run time); --split=lines takes each non-blank line as one
sentence. --unit=clause cuts sentences further after ";" and ":" (as the original example suggests).
Pairs are (sentence i, sentence i+1) and never cross a file boundary; --within=paragraph also
stops them at blank lines.

Splits: the pairs keep their order; val and test are the last two contiguous blocks, each
val_frac/test_frac of the pairs but at least --min_held and at most --max_held. For
next-sentence pairs the pair straddling each boundary is dropped, so no sentence is in two
splits. Tokenizer: --tokenizer=word (lowercased words, punctuation split off) or
--tokenizer=sentencepiece --vocab_size=8000 (subword units trained on the training split;
the model is stored with the dataset and in every checkpoint). Over-long sentences are
truncated to --max_len tokens (next-sentence pairs) or, for training pairs of parallel text,
skipped; both are counted and printed. Errors are one line; files already in --out_dir are
replaced only after everything has been read and checked.

The other prepare scripts (data/kjv, data/kjv_es) read their corpora and call
write_dataset() below.
"""
import argparse
import io
import os
import re
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from configurator import HelpFormatter  # noqa: E402,F401  (the prepare scripts' --help)
from dataset import DataError, publish, save_split  # noqa: E402
from vocab import EOS_ID, UNK_ID, Vocab, tokenize  # noqa: E402

MIN_TRAIN = 10  # fewer training pairs than this is a mistake, not a dataset
_CLAUSE_END = re.compile(r"(?<=[;:])\s+")


class PrepareError(ValueError):
    """Input that cannot become a dataset; the message names the file and place."""


def read_text(path):
    """The UTF-8 text of `path`, with errors that say what is wrong and where."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as err:
        raise PrepareError(f"{path}: {err.strerror}") from None
    if not raw.strip():
        raise PrepareError(f"{path}: empty file")
    head = raw[:200]  # UTF-16 without a BOM: ASCII text has a NUL in every other byte
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff") or (len(head) >= 8 and head.count(0) * 3 >= len(head)
                                                   and 0 in (head[0::2].count(0), head[1::2].count(0))):
        raise PrepareError(f"{path}: UTF-16 text (a byte-order mark or a NUL byte beside every character); save "
                           f"it as UTF-8, e.g. iconv -f UTF-16 -t UTF-8 {path} > {path}.utf8")
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise PrepareError(f"{path}: binary file (NUL byte at byte offset {nul})")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise PrepareError(f"{path}: not UTF-8 text (byte offset {err.start}: {err.reason})") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def clean(text):
    """One line of text: whitespace runs collapsed, pilcrows dropped."""
    return " ".join(text.replace("\u00b6", " ").split())


def segments(text, split="prose", within="file", name="text"):
    """The file's sentences, as a list of segments (lists of sentences) that pairs may not
    cross: one segment for the whole file, or one per blank-line paragraph. `name` (the
    file) is for messages and the progress bar."""
    paragraphs = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    if split == "lines":
        per_paragraph = [[clean(line) for line in p.split("\n") if line.strip()] for p in paragraphs]
    else:
        import pysbd
        from tqdm import tqdm

        segmenter = pysbd.Segmenter(language="en", clean=False)
        chunks = [(i, chunk) for i, p in enumerate(paragraphs) for chunk in _chunks(clean(p), text, p, name)]
        per_paragraph = [[] for _ in paragraphs]
        # Counted in characters: one long chunk without sentence ends can take pysbd minutes, so
        # the bar is up (from the first character) for any text that may take seconds.
        total = sum(len(chunk) for _, chunk in chunks)
        with tqdm(total=total, desc=f"{os.path.basename(name)}: sentences", unit="char", unit_scale=True, leave=False,
                  disable=total < 50_000) as bar:
            for i, chunk in chunks:
                per_paragraph[i] += [clean(s) for s in segmenter.segment(chunk) if s.strip()]
                bar.update(len(chunk))
    if within == "paragraph":
        return [p for p in per_paragraph if p]
    return [[s for p in per_paragraph for s in p]]


CHUNK_CHARS = 5_000  # pysbd's time grows faster than its input: 2.5 s for one 45,000-character paragraph
MAX_RUN_CHARS = 100_000  # text with no sentence end for this long is not prose


def _chunks(paragraph, text, raw_paragraph, name):
    """A long paragraph cut after sentence ends into pieces of about CHUNK_CHARS characters
    each, for pysbd; a PrepareError naming the line where MAX_RUN_CHARS characters go by
    without one."""
    if len(paragraph) <= CHUNK_CHARS:
        return [paragraph]
    chunks, current = [], ""
    for piece in re.split(r"(?<=[.!?])\s+", paragraph):
        if len(piece) > MAX_RUN_CHARS:
            line = text[: text.find(raw_paragraph)].count("\n") + 1
            raise PrepareError(f"{name}:{line}: {len(piece):,} characters without a sentence end (. ! ?), too long "
                               "to split into sentences; use --split=lines (one sentence per line), or break the text")
        if current and len(current) + len(piece) > CHUNK_CHARS:
            chunks.append(current)
            current = ""
        current = f"{current} {piece}" if current else piece
    return chunks + [current]


def clauses(sentence):
    """A sentence cut after each ";" and ":" ("He spake: go ye; and they went." -> 3)."""
    return [c for c in _CLAUSE_END.split(sentence) if c.strip()]


def next_pairs(segs):
    """(unit i, unit i+1) within each segment, in order."""
    return [(seg[i], seg[i + 1]) for seg in segs for i in range(len(seg) - 1)]


def held_sizes(n, val_frac, test_frac, min_held, max_held):
    size = lambda frac: min(max_held, max(min_held, round(frac * n)))  # noqa: E731
    return size(val_frac), size(test_frac)


def contiguous_split(pairs, n_val, n_test, gap, what):
    """train | val | test as contiguous blocks, in order, dropping `gap` pairs at each of the
    two boundaries (1 for next-sentence pairs, whose neighbours share a sentence)."""
    needed = n_val + n_test + 2 * gap + MIN_TRAIN
    if len(pairs) < needed:
        raise PrepareError(f"{what}: {len(pairs)} pairs, but the splits need at least {needed} "
                           f"(val {n_val}, test {n_test}, {MIN_TRAIN} to train on); "
                           "add text, or lower --min_held")
    n_train = len(pairs) - n_val - n_test - 2 * gap
    return {"train": pairs[:n_train], "val": pairs[n_train + gap : n_train + gap + n_val],
            "test": pairs[len(pairs) - n_test :]}


def read_parallel(src_path, tgt_path):
    """[(source, target)] from two line-aligned files; pairs with an empty side are dropped."""
    src, tgt = read_text(src_path).split("\n"), read_text(tgt_path).split("\n")
    for lines in (src, tgt):
        while lines and not lines[-1].strip():
            lines.pop()
    if len(src) != len(tgt):
        raise PrepareError(f"{src_path} has {len(src)} lines and {tgt_path} has {len(tgt)}: "
                           f"line {min(len(src), len(tgt)) + 1} has no partner")
    return [(clean(s), clean(t)) for s, t in zip(src, tgt) if clean(s) and clean(t)]


def read_tsv(path):
    """[(source, target)] from "source<TAB>target" lines; errors name the line."""
    pairs = []
    for line_no, line in enumerate(read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            raise PrepareError(f"{path}:{line_no}: expected source<TAB>target, got {len(fields)} field(s)")
        if clean(fields[0]) and clean(fields[1]):
            pairs.append((clean(fields[0]), clean(fields[1])))
    if not pairs:
        raise PrepareError(f"{path}: no pairs")
    return pairs


def train_sentencepiece(texts, vocab_size):
    """A SentencePiece unigram model trained on `texts` whose first four pieces are this
    project's special tokens; returns a Vocab carrying the serialized model."""
    import sentencepiece

    model = io.BytesIO()
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size, model_type="unigram",
            character_coverage=1.0, hard_vocab_limit=False, pad_id=0, unk_id=1, bos_id=2, eos_id=3,
            pad_piece="<pad>", unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>", num_threads=2,
            minloglevel=2)
    except RuntimeError as err:  # e.g. fewer pieces asked for than the text has characters
        detail = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        chars = re.search(r"smaller than required_chars\. \d+ vs (\d+)", detail)
        if chars:  # every character of the text needs a piece of its own, and so do the 4 specials
            detail = f"the text has {int(chars[1]) - 4} distinct characters; ask for at least {chars[1]} pieces"
        raise PrepareError(f"--vocab_size={vocab_size}: SentencePiece could not train ({detail})") from None
    proto = model.getvalue()
    processor = sentencepiece.SentencePieceProcessor(model_proto=proto)
    return Vocab([processor.id_to_piece(i) for i in range(processor.get_piece_size())], spm=proto)


def write_dataset(out_dir, text_splits, *, tokenizer="word", vocab_size=8000, tgt_vocab_size=None,
                  shared_vocab=True, max_len=60, long="truncate", reverse_source=False, references=False,
                  overwrite=False, vocabs=None, **facts):
    """Tokenise {split: [(source text, target text)]}, build the vocabularies from train (or
    use `vocabs`, (source, target) Vocabs, e.g. a checkpoint's, to fine-tune it on this text),
    and write train/val/test.npz, meta.json (and {val,test}.ref.txt with `references`) to
    out_dir as a whole (dataset.publish; `overwrite` as there). `long` is what happens to
    a sentence over max_len tokens: truncate (counted), or skip (training pairs; counted).
    Training pairs that are also val or test pairs are removed, and for next-sentence data
    (no references) so are training pairs whose source is a val or test source: the splits
    share no example (counted in `removed_from_train`). Returns the summary that meta.json
    holds besides the vocabularies."""
    for name in ("train", "val", "test"):
        if not text_splits.get(name):
            raise PrepareError(f"no {name} pairs")
    train = text_splits["train"]
    src_vocab, tgt_vocab = vocabs or (None, None)
    if vocabs:  # the given vocabularies' own tokenizer
        tokenizer = "word" if src_vocab.spm is None else "sentencepiece"
    if tokenizer == "sentencepiece" and not vocabs:  # subword models come first: they define the tokens
        src_texts = [s for s, _ in train] + ([t for _, t in train] if shared_vocab else [])
        src_vocab = train_sentencepiece(src_texts, vocab_size)
        tgt_vocab = src_vocab if shared_vocab else train_sentencepiece([t for _, t in train], tgt_vocab_size or vocab_size)
    split_src = src_vocab.tokens if src_vocab else tokenize
    split_tgt = tgt_vocab.tokens if tgt_vocab else tokenize
    tokens = {name: [(split_src(s), split_tgt(t)) for s, t in pairs] for name, pairs in text_splits.items()}
    n_long = {name: sum(max(len(s), len(t)) > max_len for s, t in pairs) for name, pairs in tokens.items()}
    len_p99 = int(np.percentile([max(len(s), len(t)) for s, t in tokens["train"]], 99))
    for name, pairs in tokens.items():
        if long == "skip" and name == "train":
            tokens[name] = [(s, t) for s, t in pairs if max(len(s), len(t)) <= max_len]
        elif long == "truncate":
            tokens[name] = [(s[:max_len], t[:max_len]) for s, t in pairs]
    held = {(tuple(s), tuple(t)) for name in ("val", "test") for s, t in tokens[name]}
    held_sources = set() if references else {tuple(s) for name in ("val", "test") for s, _ in tokens[name]}
    before = len(tokens["train"])
    tokens["train"] = [(s, t) for s, t in tokens["train"] if (tuple(s), tuple(t)) not in held]
    in_heldout = before - len(tokens["train"])
    tokens["train"] = [(s, t) for s, t in tokens["train"] if tuple(s) not in held_sources]
    removed = {"pairs_in_val_or_test": in_heldout, "sources_in_val_or_test": before - in_heldout - len(tokens["train"])}
    if not tokens["train"]:
        raise PrepareError(f"no training pair is left once those over --max_len {max_len} tokens and those also in "
                           "val or test are set aside")
    if tokenizer == "word" and not vocabs:  # word vocabularies: the most frequent training tokens
        train_tokens = tokens["train"]
        src_tokens = [s for s, _ in train_tokens] + ([t for _, t in train_tokens] if shared_vocab else [])
        src_vocab = Vocab.build(src_tokens, vocab_size)
        tgt_vocab = src_vocab if shared_vocab else Vocab.build([t for _, t in train_tokens], tgt_vocab_size or vocab_size)

    ids = {name: [(src_vocab.encode(s[::-1] if reverse_source else s), tgt_vocab.encode(t)) for s, t in pairs]
           for name, pairs in tokens.items()}
    unk = {name: round(float(np.mean(np.concatenate([t for _, t in p]) == UNK_ID)), 4) for name, p in ids.items()}
    # The unigram baseline: perplexity of predicting every target token (and EOS) by its
    # add-one-smoothed training frequency, on val. A trained model must beat it.
    train_tgt = np.concatenate([t + [EOS_ID] for _, t in ids["train"]])
    logp = np.log((np.bincount(train_tgt, minlength=len(tgt_vocab)) + 1.0) / (len(train_tgt) + len(tgt_vocab)))
    val_tgt = np.concatenate([t + [EOS_ID] for _, t in ids["val"]])
    summary = dict(facts, tokenizer=tokenizer, reverse_source=reverse_source, max_len=max_len,
                   long_sentences=long, n_over_max_len=n_long, train_len_p99=len_p99, removed_from_train=removed,
                   pairs={k: len(v) for k, v in ids.items()},
                   vocab_sizes=[len(src_vocab), len(tgt_vocab)], tgt_unk_rate=unk, val_unigram_ppl=round(float(np.exp(-logp[val_tgt].mean())), 2),
                   bleu=references)

    def write_files(staging):
        for name, pairs in ids.items():
            save_split(os.path.join(staging, f"{name}.npz"), pairs)
            if references and name != "train":  # what BLEU scores against: the words, <unk>s not applied
                refs = ([" ".join(t) for _, t in tokens[name]] if tokenizer == "word"
                        else [t for _, t in text_splits[name]])
                with open(os.path.join(staging, f"{name}.ref.txt"), "w", encoding="utf-8") as f:
                    f.writelines(r + "\n" for r in refs)
        for side, vocab in (("src", src_vocab), ("tgt", tgt_vocab)):
            if vocab.spm is not None:
                with open(os.path.join(staging, summary["spm"][side]), "wb") as f:
                    f.write(vocab.spm)

    summary["spm"] = {side: "spm.model" if shared_vocab else f"spm_{side}.model"
                      for side, vocab in (("src", src_vocab), ("tgt", tgt_vocab)) if vocab.spm is not None}
    try:
        publish(out_dir, write_files, src_vocab, tgt_vocab, summary, overwrite)
    except DataError as err:
        raise PrepareError(str(err)) from None
    return summary


def prepare(args):
    if args.input:
        segs = [seg for path in args.input for seg in segments(read_text(path), args.split, args.within, path)]
        if args.unit == "clause":
            segs = [[c for s in seg for c in clauses(s)] for seg in segs]
        what = args.input[0] + (f" and {len(args.input) - 1} more files" if len(args.input) > 1 else "")
        pairs, gap = next_pairs(segs), 1
        task, long, refs = "next_sentence", "truncate", False
        facts = {"n_sentences": sum(map(len, segs)), "split": args.split, "within": args.within, "unit": args.unit}
    else:
        pairs = read_parallel(args.src, args.tgt) if args.src else read_tsv(args.pairs_tsv)
        gap, what = 0, args.pairs_tsv or f"{args.src} + {args.tgt}"
        task, long, refs, facts = "translation", "skip", True, {}
    n_val, n_test = held_sizes(len(pairs), args.val_frac, args.test_frac, args.min_held, args.max_held)
    splits = contiguous_split(pairs, n_val, n_test, gap, what)
    vocabs = vocabularies_of(args.vocab_from) if args.vocab_from else None
    return write_dataset(args.out_dir, splits, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                         shared_vocab=bool(args.input), max_len=args.max_len, long=long,
                         reverse_source=args.reverse_source, references=refs, task=task, overwrite=args.overwrite,
                         corpus=what, exact_match=False, vocabs=vocabs, **facts)


def vocabularies_of(path):
    """(source, target) Vocabs of a checkpoint (.npz) or of a prepared dataset folder."""
    from checkpoint import CheckpointError, read_arrays, vocabularies
    from dataset import DataError, load_dataset

    if not path.endswith(".npz") and not os.path.isfile(os.path.join(path, "meta.json")):
        raise PrepareError(f"--vocab_from={path}: neither a checkpoint (.npz) nor a prepared dataset folder")
    try:
        if path.endswith(".npz"):
            src, tgt = vocabularies(read_arrays(path), path)
            if src is None or tgt is None:
                raise CheckpointError(f"{path}: holds no vocabulary")
            return src, tgt
        _, src, tgt, _ = load_dataset(path, need=())
        return src, tgt
    except (CheckpointError, DataError) as err:
        raise PrepareError(f"--vocab_from: {err}") from None


def notes(summary, args):
    """One line each for what a user may not have asked for: a SentencePiece vocabulary
    smaller than requested, and many training pairs over --max_len."""
    lines = []
    if args.tokenizer == "sentencepiece" and not args.vocab_from and max(summary["vocab_sizes"]) < args.vocab_size:
        lines.append(f"note: SentencePiece made {summary['vocab_sizes']} pieces, not the {args.vocab_size} asked for: "
                     f"the training text holds no more; --vocab_size={max(summary['vocab_sizes'])} says so")
    n_train, n_long = summary["pairs"]["train"], summary["n_over_max_len"]["train"]
    if n_long > 0.05 * max(1, n_train):
        what = "cut" if summary["long_sentences"] == "truncate" else "skipped"
        lines.append(f"note: {n_long} of {n_train + (n_long if what == 'skipped' else 0)} training pairs "
                     f"({100 * n_long / max(1, n_train):.0f}%) were {what} at --max_len={args.max_len} tokens; "
                     f"--max_len={summary['train_len_p99']} keeps 99% of them whole")
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", nargs="+", metavar="FILE", help="plain-text files -> next-sentence pairs")
    src.add_argument("--src", metavar="FILE", help="source side of line-aligned parallel text (with --tgt)")
    src.add_argument("--pairs_tsv", metavar="FILE", help='parallel text as "source<TAB>target" lines')
    ap.add_argument("--tgt", metavar="FILE", help="target side of line-aligned parallel text (with --src)")
    ap.add_argument("--out_dir", required=True, help="where the dataset goes; train.py --dataset=<its name>")
    ap.add_argument("--split", choices=("prose", "lines"), default="prose",
                    help="prose: sentences found by pysbd; lines: one sentence per line")
    ap.add_argument("--within", choices=("file", "paragraph"), default="file",
                    help="pairs never cross a file; paragraph: nor a blank line")
    ap.add_argument("--unit", choices=("sentence", "clause"), default="sentence",
                    help="clause: also cut sentences after ; and :")
    ap.add_argument("--tokenizer", choices=("word", "sentencepiece"), default="word",
                    help="word: lowercased words; sentencepiece: subword units trained on the training split")
    ap.add_argument("--vocab_size", type=int, default=8000, help="vocabulary size per side, specials included")
    ap.add_argument("--vocab_from", metavar="PATH", help="use the vocabularies of this checkpoint (.npz) or prepared "
                    "dataset instead of building them, so that its model can be fine-tuned on this text "
                    "(train.py --init_from); --tokenizer and --vocab_size then do not apply")
    ap.add_argument("--max_len", type=int, default=60, help="longest sentence in tokens (see above)")
    ap.add_argument("--val_frac", type=float, default=0.03, help="val block, as a fraction of the pairs")
    ap.add_argument("--test_frac", type=float, default=0.03, help="test block, as a fraction of the pairs")
    ap.add_argument("--min_held", type=int, default=50, help="smallest val and test block, in pairs")
    ap.add_argument("--max_held", type=int, default=2000, help="largest val and test block, in pairs")
    ap.add_argument("--reverse_source", action="store_true", help="reverse source sentences (Sutskever et al. 2014)")
    ap.add_argument("--overwrite", action="store_true", help="write into an --out_dir that holds files no prepare "
                                                             "script wrote (those the dataset names are replaced)")
    args = ap.parse_args(argv)
    if (args.src is None) != (args.tgt is None):
        ap.error("--src and --tgt go together")
    if args.vocab_size < 5 or args.max_len < 1 or not 1 <= args.min_held <= args.max_held:
        ap.error("--vocab_size must be at least 5, --max_len at least 1, and 1 <= --min_held <= --max_held")
    for name in ("val_frac", "test_frac"):
        if not 0 <= getattr(args, name) < 0.5:
            ap.error(f"--{name} must be in [0, 0.5)")
    try:
        summary = prepare(args)
    except PrepareError as err:
        sys.exit(f"error: {err}")
    name = os.path.normpath(args.out_dir)
    if os.path.dirname(os.path.abspath(name)) == os.path.join(ROOT, "data"):
        name = os.path.basename(name)  # train.py finds data/<name> by its name
    elif os.sep not in name:
        name = os.path.join(".", name)  # a bare name would mean data/<name> to train.py
    print(f"{summary['corpus']}: {summary.get('n_sentences', '')} {args.unit}s; pairs {summary['pairs']}, "
          f"{summary['n_over_max_len']} over {args.max_len} tokens ({summary['long_sentences']}); removed from train "
          f"as in val or test: {summary['removed_from_train']}; "
          f"vocab {summary['vocab_sizes']} ({summary['tokenizer']}); target <unk> rate {summary['tgt_unk_rate']}; "
          f"val unigram perplexity {summary['val_unigram_ppl']}")
    for line in notes(summary, args):
        print(line)
    print(f"wrote {args.out_dir}; next: python train.py --dataset={name}")


if __name__ == "__main__":
    main()
