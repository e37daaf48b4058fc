"""How varied and how loopy are a checkpoint's outputs? Decodes the first --n val sources of a
run's dataset greedily, by sampling (temperature 0.8), by nucleus sampling (top_p 0.9) and
with beam search (5), each without and with the no-repeat-n-gram guard, and measures:

  distinct-1, distinct-2   distinct unigrams (bigrams) over all outputs / all unigrams (bigrams)
  unique                   distinct outputs / outputs (1.0: every source got its own answer)
  loops                    outputs that repeat some 3-gram / outputs
  len                      mean output length in tokens (the references' on the reference row)

    python benchmarks/diversity.py --out_dir out/kjv [--n 300] [--no_repeat_ngram_size 3]
    python benchmarks/diversity.py --out_dir out/kjv out/kjv_large --json benchmarks/diversity.json

Prints a markdown table per run; --json adds the figures to that file, keyed by run folder.
"""
import argparse
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from checkpoint import checkpoint_path  # noqa: E402
from dataset import dataset_dir, load_dataset  # noqa: E402
from model import Model  # noqa: E402
from scoring import decode_pairs  # noqa: E402


def ngrams(tokens, n):
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def diversity(outputs):
    """The figures above for a list of token-id lists."""
    def distinct(n):
        grams = [g for out in outputs for g in ngrams(out, n)]
        return len(set(grams)) / max(1, len(grams))

    loops = sum(len(set(ngrams(out, 3))) < len(ngrams(out, 3)) for out in outputs)
    return {"distinct_1": round(distinct(1), 4), "distinct_2": round(distinct(2), 4),
            "unique": round(len({tuple(o) for o in outputs}) / len(outputs), 4),
            "loops": round(loops / len(outputs), 4), "len": round(float(np.mean([len(o) for o in outputs])), 1)}


def measure(out_dir, ckpt, n, max_len, guard, seed):
    path = checkpoint_path(out_dir, ckpt)
    model = Model.load(path)
    dataset = model.checkpoint_state.get("data", {}).get("dataset", "kjv")
    _, _, _, splits = load_dataset(dataset_dir(dataset))
    pairs = splits["val"][:n]
    rows = {"reference": diversity([[int(w) for w in t] for _, t in pairs])}
    samples = {}
    for name, how in (("greedy", {}), ("sampled T=0.8", {"temperature": 0.8}),
                      ("nucleus top_p=0.9", {"temperature": 1.0, "top_p": 0.9}), ("beam 5", {"beam_size": 5})):
        for g in (0, guard):
            label = name + (f", no-repeat {g}" if g else "")
            outputs = decode_pairs(model, pairs, 50, max_len, rng=np.random.default_rng(seed), no_repeat_ngram_size=g,
                                   **how)
            rows[label] = diversity(outputs)
            samples[label] = [model.tgt_vocab.text(o) for o in outputs[:2]]
    return {"checkpoint": path, "step": model.checkpoint_state.get("step"), "dataset": dataset,
            "n_sources": len(pairs), "max_len": max_len, "rows": rows, "samples": samples,
            "sources": [model.src_vocab.text(s[::-1] if model.checkpoint_state.get("data", {}).get("reverse_source")
                                             else s) for s, _ in pairs[:2]]}


def table(result):
    keys = ["distinct_1", "distinct_2", "unique", "loops", "len"]
    lines = [f"{result['checkpoint']} (step {result['step']}), first {result['n_sources']} val sources of "
             f"{result['dataset']}:", "", "| decoding | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(str(row[k]) for k in keys) + " |" for name, row in result["rows"].items()]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out_dir", nargs="+", required=True, help="run folder(s) to measure")
    ap.add_argument("--ckpt", default="best", help="best, latest, or a path to an .npz")
    ap.add_argument("--n", type=int, default=300, help="val sources to decode")
    ap.add_argument("--max_len", type=int, default=60, help="longest output")
    ap.add_argument("--no_repeat_ngram_size", type=int, default=3, help="the guard's n in the guarded rows")
    ap.add_argument("--seed", type=int, default=1337, help="sampling seed")
    ap.add_argument("--json", default=None, help="add the figures to this JSON file")
    args = ap.parse_args(argv)
    if args.n < 1 or args.no_repeat_ngram_size < 1:
        ap.error("--n and --no_repeat_ngram_size must be positive")
    results = {}
    for out_dir in args.out_dir:
        results[out_dir] = measure(out_dir, args.ckpt, args.n, args.max_len, args.no_repeat_ngram_size, args.seed)
        print(table(results[out_dir]) + "\n", flush=True)
    if args.json:
        old = json.load(open(args.json, encoding="utf-8")) if os.path.exists(args.json) else {}
        old.update(results)
        tmp = args.json + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(old, f, indent=1, ensure_ascii=False)
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
