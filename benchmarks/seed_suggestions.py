"""The original example's two suggestions against the plain next-verse setup, on KJV:

  plain     verse -> next verse (data/kjv/prepare.py)
  reversed  the source verse reversed (Sutskever et al. 2014; --reverse_source)
  clauses   clause -> next clause, verses cut after ";" and ":" (--unit clause)

Each is prepared into its own folder, trained with train.py's defaults (the `make train` run)
into out/seed_suggestions/<name>, and measured: best val loss and perplexity (per target
token, EOS included, on that setup's own val split: clauses are shorter targets than verses,
so their perplexities are not the same quantity), then benchmarks/diversity.py's figures for
greedy, sampled and beam outputs with and without the no-repeat guard.

    python benchmarks/seed_suggestions.py [--n 300] [any train.py setting, e.g. --max_iters=700]

Writes benchmarks/seed_suggestions.json and prints markdown tables.
"""
import argparse
import json
import math
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import diversity  # noqa: E402

SETUPS = {"plain": [], "reversed": ["--reverse_source"], "clauses": ["--unit", "clause"]}


def run(cmd):
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300, help="val sources decoded for the diversity figures")
    ap.add_argument("--out_root", default="out/seed_suggestions", help="run folders go under here")
    ap.add_argument("--json", default=os.path.join(ROOT, "benchmarks", "seed_suggestions.json"))
    args, extra = ap.parse_known_args(argv)  # the rest are train.py settings for all three runs
    results = {}
    for name, flags in SETUPS.items():
        data = os.path.join(ROOT, "data", "kjv" if name == "plain" else f"kjv_{name}")
        out = os.path.join(args.out_root, name)
        run([sys.executable, "data/kjv/prepare.py", "--out_dir", data, *flags])
        run([sys.executable, "train.py", f"--dataset={data}", f"--out_dir={out}", "--num_samples=0", *extra])
        with open(os.path.join(ROOT, out, "log.jsonl"), encoding="utf-8") as f:
            rows = [json.loads(line) for line in f]
        best = min(r["val_loss"] for r in rows)
        results[name] = {"prepare_flags": flags, "train_flags": extra, "steps": rows[-1]["step"],
                         "best_val_loss": round(best, 4), "best_val_ppl": round(math.exp(best), 2),
                         "diversity": diversity.measure(os.path.join(ROOT, out), "best", args.n, 60, 3, 1337)}
        print(f"\n{name}: best val ppl {math.exp(best):.1f}\n" + diversity.table(results[name]["diversity"]) + "\n",
              flush=True)
    with open(args.json, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1, ensure_ascii=False)


if __name__ == "__main__":
    main()
