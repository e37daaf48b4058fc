"""Data-parallel throughput with 1 and 2 MPI ranks here, and predicted scaling beyond.

    python data/kjv/prepare.py
    python benchmarks/mpi_scaling.py [--steps 40]

Measures, on the default KJV model (one BLAS thread per rank, global batch 64 * ranks, i.e.
64 pairs per rank, the way a cluster run grows its batch):
- target tokens/s with 1 rank and with 2 ranks (`mpiexec -n 2 python train.py ...`), and of
  one plain process with 2 BLAS threads, the way `python train.py` uses this machine;
- bytes all-reduced per step (one float32 per parameter plus 3) and compute seconds per step
  on one thread, for the default model (from the 1-rank run) and for the benchmark model of
  benchmarks/bench_train.py (embedding 256, hidden 512, vocabulary 10,000; measured here with
  `bench_train.py --impls=pytensor --threads=1`);
and predicts the efficiency of N ranks on a network of bandwidth W with a ring all-reduce,
which moves 2 (N - 1) / N times the buffer through each link in 2 (N - 1) messages:

    t_comm(N)  = 2 (N - 1) / N * bytes / W + 2 (N - 1) * latency
    efficiency = t_compute / (t_compute + t_comm)        (no overlap of the two assumed)

On this 2-core machine the 2-rank figure mostly checks that the machinery works; compare it
with the plain 2-thread process, which uses the same two cores.
Writes benchmarks/mpi_scaling.json and prints a markdown table.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

NETWORKS = {"10 Gb/s": (10e9 / 8, 20e-6), "100 Gb/s": (100e9 / 8, 5e-6)}  # bytes/s, latency s


def n_params(**settings):
    from model import Model, ModelConfig

    return sum(p.get_value(borrow=True).size for p in Model(ModelConfig(**settings)).params)


def measure(ranks, steps, out_dir, threads="1"):
    """Target tokens/s of the second half of a run (compilation and warm-up excluded)."""
    cmd = [sys.executable, "train.py", f"--out_dir={out_dir}", f"--max_iters={steps}",
           f"--eval_interval={steps // 2}", "--max_minutes=0", "--num_samples=0",
           f"--batch_size={64 * ranks}"]
    if ranks > 1:
        cmd = [os.path.join(os.path.dirname(sys.executable), "mpiexec"), "-n", str(ranks), *cmd]
    env = dict(os.environ, OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads)
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        last = [json.loads(line) for line in f][-1]  # the second window: compile excluded
    return last["tokens_per_s"]


def bench_step_seconds(steps):
    """Median training s/step of bench_train.py's model (ours, Cho's GRU) on one thread."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "bench.json")
        subprocess.run([sys.executable, "benchmarks/bench_train.py", "--impls=pytensor", "--threads=1", "--rounds=1",
                        f"--steps={steps}", "--decode_reps=1", f"--out={out}"], cwd=ROOT, check=True, capture_output=True)
        with open(out) as f:
            return json.load(f)["results"]["pytensor"]["train_s_per_step"]


def efficiency(t_compute, n_bytes, ranks, bandwidth, latency):
    t_comm = 2 * (ranks - 1) / ranks * n_bytes / bandwidth + 2 * (ranks - 1) * latency
    return t_compute / (t_compute + t_comm)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40, help="steps per run (the second half is timed)")
    ap.add_argument("--bench_steps", type=int, default=8, help="timed steps of the benchmark model")
    ap.add_argument("--json", default=os.path.join(ROOT, "benchmarks", "mpi_scaling.json"))
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tok_1 = measure(1, args.steps, os.path.join(tmp, "r1"))
        tok_2 = measure(2, args.steps, os.path.join(tmp, "r2"))
        tok_1x2 = measure(1, args.steps, os.path.join(tmp, "r1t2"), threads="2")
    bench_s = bench_step_seconds(args.bench_steps)
    from dataset import load_split

    train = load_split(os.path.join(ROOT, "data", "kjv", "train.npz"))
    tokens_per_pair = sum(len(t) + 1 for _, t in train) / len(train)  # EOS included
    default_s = 64 * tokens_per_pair / tok_1  # compute seconds per 64-pair step on one rank
    models = {
        "default (E 128, H 256, V 6,000)": (n_params(src_vocab_size=6000, tgt_vocab_size=6000), default_s),
        "benchmark (E 256, H 512, V 10,000)": (
            n_params(embed_size=256, hidden_size=512, src_vocab_size=10000, tgt_vocab_size=10000),
            bench_s),
    }
    rows = []
    for name, (params, t_compute) in models.items():
        n_bytes = 4 * (params + 3)
        row = {"model": name, "params": params, "bytes_per_step": n_bytes, "compute_s_per_step": round(t_compute, 3)}
        for net, (bandwidth, latency) in NETWORKS.items():
            for ranks in (8, 64):
                row[f"eff_{ranks}_{net}"] = round(efficiency(t_compute, n_bytes, ranks, bandwidth, latency), 3)
        rows.append(row)
    result = {"machine": "2 CPU cores, no GPU, one BLAS thread per rank",
              "tokens_per_s": {"1 rank, 1 thread": round(tok_1), "2 ranks, 1 thread each": round(tok_2),
                               "1 rank, 2 BLAS threads (no MPI)": round(tok_1x2)}, "models": rows,
              "networks": {k: {"bytes_per_s": v[0], "latency_s": v[1]} for k, v in NETWORKS.items()}}
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    print(f"tokens/s: 1 rank {tok_1:.0f}, 2 ranks {tok_2:.0f} (x{tok_2 / tok_1:.2f}); "
          f"1 process with 2 BLAS threads {tok_1x2:.0f}\n")
    print("| model | params | MB all-reduced / step | compute s / step | 8 ranks, 10 Gb/s | 64 ranks, 10 Gb/s "
          "| 8 ranks, 100 Gb/s | 64 ranks, 100 Gb/s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['params'] / 1e6:.2f}M | {r['bytes_per_step'] / 1e6:.1f} | {r['compute_s_per_step']} "
              f"| {r['eff_8_10 Gb/s']} | {r['eff_64_10 Gb/s']} | {r['eff_8_100 Gb/s']} | {r['eff_64_100 Gb/s']} |")


if __name__ == "__main__":
    main()
