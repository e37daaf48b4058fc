"""PyTensor's own profile of one training step of the benchmark model (bench_train.py's sizes).

    python benchmarks/profile_step.py                 # the default: fused GRU op
    python benchmarks/profile_step.py --scan_gru      # the recurrent cells under pytensor.scan, for comparison
    python benchmarks/profile_step.py --cell=lstm     # another cell (recurrence.StepLoop)
    python benchmarks/profile_step.py --attention=bahdanau   # bidirectional encoder, attention decoder
    python benchmarks/profile_step.py --size=default --cell=lstm   # make train's model size
    python benchmarks/profile_step.py --size=default --cell=lstm --nodes=25   # and the 25 costliest nodes

Prints seconds per step (median) and `pytensor.function(..., profile=True)`'s table of ops by
time, summed over the timed steps: where a step's time goes.
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flags  # noqa: F401  (float32 and the project's PyTensor flags, before pytensor)
import numpy as np  # noqa: E402
import pytensor  # noqa: E402
from benchmarks.bench_train import OTHER_SIZES, SIZES, batch  # noqa: E402
from model import Model, ModelConfig  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scan_gru", action="store_true", help="run the recurrent cells with pytensor.scan, not their fused op")
    ap.add_argument("--cell", default="gru", help="ModelConfig.cell: gru, lstm, benchmarks.mgu:MGU, ...")
    ap.add_argument("--reset_after", action="store_true", help="nn.GRU's reset convention")
    ap.add_argument("--attention", default="none", help="none, bahdanau or luong (with a bidirectional encoder)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps, after one warm-up step")
    ap.add_argument("--ops", type=int, default=15, help="rows of the op table to print")
    ap.add_argument("--nodes", type=int, default=0, help="rows of the table of single nodes (apply nodes) to print")
    ap.add_argument("--size", choices=("bench", *OTHER_SIZES), default="bench", help="bench_train.py's --size")
    args = ap.parse_args()
    SIZES.update(OTHER_SIZES.get(args.size, {}))
    s = SIZES
    model = Model(ModelConfig(embed_size=s["E"], hidden_size=s["H"], src_vocab_size=s["V"],
                              tgt_vocab_size=s["V"], reset_after=args.reset_after, cell=args.cell,
                              attention=args.attention, bidirectional=args.attention != "none"))
    for module in model.modules.values():
        cell = getattr(module, "cell", module)
        if hasattr(cell, "fast_loop"):
            cell.fast_loop = not args.scan_gru
    pytensor.config.profile = True
    step = model.compile_train(optimizer="sgd", grad_clip=1.0)
    src, tgt = batch(np.random.default_rng(0), s["V"], s["B"], s["T"])
    step(src, tgt, np.float32(0.01))
    step.profile.reset()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step(src, tgt, np.float32(0.01))
        times.append(time.perf_counter() - t0)
    print(f"{'scan' if args.scan_gru else 'fused'} {args.cell}: {statistics.median(times):.3f} s/step (median of {args.steps})")
    step.profile.summary(n_ops_to_print=args.ops, n_apply_to_print=args.nodes)


if __name__ == "__main__":
    main()
