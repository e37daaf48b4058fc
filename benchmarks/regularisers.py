"""What each regulariser costs per training step, side by side in one process.

    python benchmarks/regularisers.py                    # kjv_large's size on KJV-shaped batches
    python benchmarks/regularisers.py --cell=lstm --attention=bahdanau

One model per setting (the same architecture, E 256, H 512, V 6,000, batch 64, source and
target length 30), each compiled once; then rounds in which every model takes --steps timed
steps in turn, so that the machine's drift falls on all of them alike. Prints the median
s/step of each and its ratio to the model without regularisation; writes
benchmarks/regularisers.json.
"""
import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SETTINGS = {
    "none": {},
    "embed_dropout": {"embed_dropout": 0.2},
    "rnn_dropout (locked)": {"rnn_dropout": 0.3},
    "weight_drop": {"weight_drop": 0.3},
    "word_dropout": {"word_dropout": 0.1},
    "readout_dropout": {"readout_dropout": 0.3},
    "tie_embeddings": {"tie_embeddings": True},
    "label_smoothing": {"label_smoothing": 0.1},
    "all": {"embed_dropout": 0.2, "rnn_dropout": 0.3, "weight_drop": 0.3, "word_dropout": 0.1,
            "readout_dropout": 0.3, "tie_embeddings": True, "label_smoothing": 0.1},
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cell", default="gru")
    ap.add_argument("--attention", default="none")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "regularisers.json"))
    args = ap.parse_args()

    import numpy as np

    from model import Model, ModelConfig

    rng = np.random.default_rng(0)
    V, B, T = 6000, 64, 30
    src = rng.integers(4, V, size=(T, B)).astype("int32")
    tgt = rng.integers(4, V, size=(T + 1, B)).astype("int32")
    tgt[0] = 2
    steps = {}
    for name, settings in SETTINGS.items():
        cfg = ModelConfig(embed_size=256, hidden_size=512, src_vocab_size=V, tgt_vocab_size=V, cell=args.cell,
                          attention=args.attention, bidirectional=args.attention != "none", **settings)
        steps[name] = Model(cfg).compile_train("adam", 1.0)
        steps[name](src, tgt, np.float32(1e-3))  # warm-up
        print(f"compiled {name}", flush=True)
    times = {name: [] for name in SETTINGS}
    for _ in range(args.rounds):
        for name, step in steps.items():
            for _ in range(args.steps):
                t0 = time.perf_counter()
                step(src, tgt, np.float32(1e-3))
                times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["none"])
    rows = {name: {"s_per_step": statistics.median(t), "ratio_to_none": statistics.median(t) / base, "settings":
                   SETTINGS[name]} for name, t in times.items()}
    print(f"| setting | s/step | x none |\n|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['s_per_step']:.3f} | {row['ratio_to_none']:.2f} |")
    with open(args.out, "w") as f:
        json.dump({"cell": args.cell, "attention": args.attention, "rounds": args.rounds, "steps": args.steps,
                   "threads": os.environ.get("OMP_NUM_THREADS", "all"), "results": rows}, f, indent=1)


if __name__ == "__main__":
    main()
