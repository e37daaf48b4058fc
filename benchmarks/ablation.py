"""The regularisers at equal wall-clock on KJV: each alone, none, and all together.

    python benchmarks/ablation.py                          # 9 runs of 20 minutes, 2 at a time
    python benchmarks/ablation.py --minutes=60 --parallel=1 --only=none,all
    python benchmarks/ablation.py --report                 # the table from runs already made

Each run is `train.py config/kjv_large.toml` (E 256, H 512, GRU) bounded by --minutes of
training alone (no step limit, so the learning rate decays over those minutes), with one BLAS
thread, in out/ablation/<name>; --parallel runs share the machine. The table gives the best
val perplexity, the minute and step it came at, and the last evaluation's; it is written to
benchmarks/ablation.json with each run's whole curve. A short run favours no regularisation:
the regularisers pay later, when the plain model overfits (README, A night that pays).
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = {
    "none": [],
    "embed_dropout 0.1": ["--embed_dropout=0.1"],
    "rnn_dropout 0.25 (locked)": ["--rnn_dropout=0.25"],
    "weight_drop 0.2": ["--weight_drop=0.2"],
    "word_dropout 0.05": ["--word_dropout=0.05"],
    "readout_dropout 0.25": ["--readout_dropout=0.25"],
    "tie_embeddings (init std 0.2)": ["--tie_embeddings=true", "--embed_init_std=0.2"],
    "label_smoothing 0.1": ["--label_smoothing=0.1"],
    "all": ["--embed_dropout=0.1", "--rnn_dropout=0.25", "--weight_drop=0.2", "--word_dropout=0.05",
            "--readout_dropout=0.25", "--tie_embeddings=true", "--embed_init_std=0.2", "--label_smoothing=0.1"],
}


def folder(name):
    return os.path.join(ROOT, "out", "ablation", name.split(" ")[0])


def command(name, minutes):
    return [sys.executable, os.path.join(ROOT, "train.py"), os.path.join(ROOT, "config", "kjv_large.toml"),
            f"--out_dir={folder(name)}", "--overwrite=true", "--max_iters=0", f"--max_minutes={minutes}",
            "--eval_interval=250", "--num_samples=0", *RUNS[name]]


def summary(name):
    path = os.path.join(folder(name), "log.jsonl")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    if not rows:
        return None
    best = min(rows, key=lambda r: r["val_loss"])
    return {"flags": RUNS[name], "best_val_ppl": round(best["val_ppl"], 2), "best_minute": round(best["elapsed_s"] / 60, 1),
            "best_step": best["step"], "last_val_ppl": round(rows[-1]["val_ppl"], 2), "steps": rows[-1]["step"],
            "minutes": round(rows[-1]["elapsed_s"] / 60, 1),
            "curve": [(r["step"], round(r["elapsed_s"] / 60, 2), round(r["val_ppl"], 2)) for r in rows]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=20.0, help="training minutes per run")
    ap.add_argument("--parallel", type=int, default=2, help="runs at a time, one BLAS thread each")
    ap.add_argument("--only", default="", help="comma-separated run names' first words (none,all,...)")
    ap.add_argument("--report", action="store_true", help="only print the table of runs already made")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "ablation.json"))
    args = ap.parse_args()
    names = [n for n in RUNS if not args.only or n.split(" ")[0] in args.only.split(",")]
    if not args.report:
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        waiting, running = list(names), []
        while waiting or running:
            while waiting and len(running) < args.parallel:
                name = waiting.pop(0)
                os.makedirs(folder(name), exist_ok=True)
                log = open(os.path.join(folder(name), "train.out"), "w")
                print(f"start {name}: {' '.join(command(name, args.minutes)[2:])}", flush=True)
                running.append((name, subprocess.Popen(command(name, args.minutes), env=env, stdout=log,
                                                       stderr=subprocess.STDOUT, cwd=ROOT), log))
            time.sleep(10)
            for entry in list(running):
                if entry[1].poll() is not None:
                    entry[2].close()
                    running.remove(entry)
                    print(f"done {entry[0]} (exit {entry[1].returncode})", flush=True)
    results = {name: summary(name) for name in names}
    print("| regulariser | best val ppl | at minute (step) | last val ppl | steps in the run |\n|---|---|---|---|---|")
    for name, r in results.items():
        if r:
            print(f"| {name} | {r['best_val_ppl']} | {r['best_minute']} ({r['best_step']}) | {r['last_val_ppl']} "
                  f"| {r['steps']} |")
    old = json.load(open(args.out, encoding="utf-8")) if os.path.exists(args.out) else {}
    old.update({"minutes": args.minutes, "parallel": args.parallel, "config": "config/kjv_large.toml",
                "results": {**old.get("results", {}), **{k: v for k, v in results.items() if v}}})
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(old, f, indent=1)


if __name__ == "__main__":
    main()
