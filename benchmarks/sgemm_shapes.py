"""float32 matmuls at the shapes of one loop step, against numpy's 2048^2 peak: why the
per-step matmuls of our loops (and of any loop over a batch of 64) stay well below peak.

    python benchmarks/sgemm_shapes.py                 # two threads; numpy, then torch.mm
    python benchmarks/sgemm_shapes.py --threads=1

A step multiplies its batch (64 rows) by a weight matrix (K, N). Each product is timed with
four different weight matrices in turn, so that the weights come from memory or L3 as in a
loop whose step reads several of them; the median of 7 batches of 20 products is taken.
numpy (OpenBLAS, what our loops call) and, with PyTorch installed, torch.mm (its MKL) run in
processes of their own: two BLAS thread pools in one process slow each other down. Writes
sgemm_shapes.json beside this file.
"""
import argparse
import json
import os
import subprocess
import sys
import time

SHAPES = [(M, K, N) for M in (64, 128) for K in (256, 512, 1024, 2048) for N in (512, 2048)]


def rate(mm, a, bs, out, reps=20):
    """GFLOP/s of mm(a, bs[i], out), cycling through bs, over batches of `reps` products."""
    for b in bs:  # warm-up
        mm(a, b, out)
    times = []
    for _ in range(7):
        t0 = time.perf_counter()
        for i in range(reps):
            mm(a, bs[i % len(bs)], out)
        times.append((time.perf_counter() - t0) / reps)
    return 2 * a.shape[0] * a.shape[1] * bs[0].shape[1] / sorted(times)[3] / 1e9


def measure(lib):
    """{"peak": numpy's 2048^2 rate or None, "M,K,N": GFLOP/s, ...} for `lib` in this process."""
    import numpy as np

    rng = np.random.default_rng(0)
    m = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    if lib == "torch":
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        mm, wrap, empty = (lambda a, b, out: torch.mm(a, b, out=out)), torch.from_numpy, torch.empty
    else:
        mm, wrap, empty = (lambda a, b, out: np.dot(a, b, out=out)), (lambda x: x), (lambda *s: np.empty(s, np.float32))
    result = {"peak": rate(mm, m(2048, 2048), [m(2048, 2048)], np.empty((2048, 2048), np.float32), reps=3)
              if lib == "numpy" else None}
    for M, K, N in SHAPES:
        result[f"{M},{K},{N}"] = rate(mm, wrap(m(M, K)), [wrap(m(K, N)) for _ in range(4)], empty(M, N))
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="BLAS threads")
    ap.add_argument("--lib", choices=["numpy", "torch"], help=argparse.SUPPRESS)  # a worker process's
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "sgemm_shapes.json"))
    args = ap.parse_args()
    if args.lib:
        print(json.dumps(measure(args.lib)))
        return
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OPENBLAS_NUM_THREADS=str(args.threads),
               MKL_NUM_THREADS=str(args.threads))
    found = {}
    for lib in ("numpy", "torch"):
        run = subprocess.run([sys.executable, __file__, f"--lib={lib}"], env=env, capture_output=True, text=True)
        if run.returncode == 0:
            found[lib] = json.loads(run.stdout.splitlines()[-1])
        else:
            print(f"{lib}: not measured ({run.stderr.strip().splitlines()[-1] if run.stderr.strip() else run.returncode})")
    peak = found["numpy"]["peak"]
    rows = []
    for M, K, N in SHAPES:
        row = dict(M=M, K=K, N=N, **{f"{lib}_gflops": round(r[f"{M},{K},{N}"], 1) for lib, r in found.items()})
        rows.append(row)
        print(f"({M:3d}, {K:4d}) @ ({K:4d}, {N:4d}): " + ", ".join(
            f"{lib} {row[f'{lib}_gflops']:6.1f} GFLOP/s ({100 * row[f'{lib}_gflops'] / peak:3.0f}%)" for lib in found))
    print(f"numpy's 2048^2 peak: {peak:.1f} GFLOP/s, {args.threads} thread(s)")
    with open(args.out, "w") as f:
        json.dump(dict(threads=args.threads, numpy_peak_gflops=round(peak, 1), shapes=rows), f, indent=1)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
