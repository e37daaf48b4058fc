"""English -> Spanish (KJV -> Reina-Valera 1909): the core model against a bidirectional
encoder with Bahdanau attention, on the same wall-clock budget, scored on the test split.

    python data/kjv_es/prepare.py
    python benchmarks/translation.py [--minutes 35]

Both models train at the same time, one process each with one BLAS thread, for --minutes of
wall-clock time (config/kjv_es_plain.toml and config/kjv_es.toml; only max_minutes and
out_dir are overridden). Then evaluate.py scores the best checkpoint (lowest val loss) of each
on the 1,000 test verses: the core model greedily, the attention model greedily and with
beam 5. Writes benchmarks/translation.json and prints a markdown table.
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = {"plain": "config/kjv_es_plain.toml", "attention": "config/kjv_es.toml"}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=35.0, help="training budget per model, wall-clock")
    ap.add_argument("--out_root", default="out/bench_translation", help="run folders go under here")
    ap.add_argument("--json", default=os.path.join(ROOT, "benchmarks", "translation.json"), help="results file")
    args = ap.parse_args(argv)
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    procs = {}
    for name, config in RUNS.items():
        out_dir = os.path.join(args.out_root, name)
        os.makedirs(out_dir, exist_ok=True)
        cmd = [sys.executable, "train.py", config, f"--out_dir={out_dir}", f"--max_minutes={args.minutes}"]
        log = open(os.path.join(out_dir, "train.out"), "w")
        procs[name] = (subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), cmd)
    for name, (proc, cmd) in procs.items():
        if proc.wait() != 0:
            sys.exit(f"error: {' '.join(cmd)} failed; see {args.out_root}/{name}/train.out")

    results = []
    for name, beam in (("plain", 1), ("attention", 1), ("attention", 5)):
        out_dir = os.path.join(args.out_root, name)
        started = time.time()
        cmd = [sys.executable, "evaluate.py", f"--out_dir={out_dir}", "--split=test", f"--beam_size={beam}"]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"error: {' '.join(cmd)}: {done.stderr.strip()}")
        scores = json.loads(done.stdout.strip().splitlines()[-1])
        log = [json.loads(line) for line in open(os.path.join(ROOT, out_dir, "log.jsonl"))]
        best = min(log, key=lambda r: r["val_loss"])
        results.append({"model": name, "decoding": "greedy" if beam == 1 else f"beam {beam}",
                        "train_minutes": args.minutes, "steps": log[-1]["step"], "best_step": best["step"],
                        "val_ppl": round(best["val_ppl"], 2), "test_bleu": scores["bleu"],
                        "test_chrf": scores["chrf"], "decode_seconds": round(time.time() - started, 1),
                        "command": " ".join(procs[name][1][1:])})
    with open(args.json, "w") as f:
        json.dump({"machine": "2 CPU cores, no GPU; both runs concurrent, 1 BLAS thread each",
                   "results": results}, f, indent=1)
    print("| model | decoding | steps in budget | best val ppl | test BLEU | test chrF |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['model']} | {r['decoding']} | {r['steps']} | {r['val_ppl']} | {r['test_bleu']} | {r['test_chrf']} |")


if __name__ == "__main__":
    main()
