"""Synthetic sequence tasks that show learning works end to end, scored by exact match.

    reverse: a b c d -> d c b a        (the default)
    copy:    a b c d -> a b c d
    sort:    c a d b -> a b c d

Sequences of random symbols with random lengths; train/val/test drawn with a fixed seed,
with no held-out sequence also in train. Writes train/val/test.npz plus meta.json to
--out_dir (default: beside this script).

    python data/reverse/prepare.py [--task reverse] [--n_symbols 20] [--max_len 10]
"""
import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # the repository root

from configurator import HelpFormatter  # noqa: E402
from dataset import DataError, publish, save_split  # noqa: E402
from vocab import SPECIALS, Vocab  # noqa: E402

TASKS = {"reverse": lambda s: s[::-1], "copy": lambda s: list(s), "sort": sorted}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--task", choices=sorted(TASKS), default="reverse", help="what the target is")
    ap.add_argument("--out_dir", default=HERE, help="where to write the splits")
    ap.add_argument("--n_symbols", type=int, default=20, help="alphabet size")
    ap.add_argument("--min_len", type=int, default=3, help="shortest sequence")
    ap.add_argument("--max_len", type=int, default=10, help="longest sequence")
    ap.add_argument("--n_train", type=int, default=20000, help="training pairs")
    ap.add_argument("--n_heldout", type=int, default=500, help="pairs in each of val and test")
    ap.add_argument("--seed", type=int, default=0, help="random seed")
    ap.add_argument("--overwrite", action="store_true", help="write into an --out_dir that holds files no prepare "
                                                             "script wrote (those the dataset names are replaced)")
    args = ap.parse_args(argv)
    if not 1 <= args.min_len <= args.max_len or args.n_symbols < 2:
        ap.error("need 1 <= --min_len <= --max_len and --n_symbols >= 2")

    symbols = [f"s{i}" for i in range(args.n_symbols)]
    vocab = Vocab(SPECIALS + symbols)
    rng = np.random.default_rng(args.seed)
    seen, pairs = set(), {"val": [], "test": [], "train": []}
    n_wanted = {"val": args.n_heldout, "test": args.n_heldout, "train": args.n_train}
    for name in ("val", "test", "train"):  # held-out first, so train can skip their sequences
        tries = 0
        while len(pairs[name]) < n_wanted[name]:
            tries += 1
            if tries > 100 * n_wanted[name] + 1000:
                sys.exit(f"error: cannot draw {n_wanted[name]} distinct {name} sequences; "
                         "raise --max_len or --n_symbols")
            length = int(rng.integers(args.min_len, args.max_len + 1))
            seq = tuple(int(x) for x in rng.integers(0, args.n_symbols, length))
            if seq in seen:
                continue
            seen.add(seq)
            src = [symbols[i] for i in seq]
            pairs[name].append((vocab.encode(src), vocab.encode(TASKS[args.task](src))))

    def write_files(staging):
        for name, split in pairs.items():
            save_split(os.path.join(staging, f"{name}.npz"), split)

    try:
        publish(args.out_dir, write_files, vocab, vocab, dict(task=args.task, reverse_source=False, exact_match=True,
                                                              pairs={k: len(v) for k, v in pairs.items()}), args.overwrite)
    except DataError as err:
        sys.exit(f"error: {err}")
    print(f"{args.task}: {', '.join(f'{k} {len(v)}' for k, v in pairs.items())} pairs; wrote {args.out_dir}")


if __name__ == "__main__":
    main()
