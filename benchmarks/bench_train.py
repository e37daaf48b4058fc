"""Training and decoding speed of this project's Model against PyTorch, side by side.

    pip install torch==2.13.0            # CPU build; needed by this script only
    python benchmarks/bench_train.py     # every row, 3 rounds: about 40 minutes on 2 cores
    python benchmarks/bench_train.py --quick
    python benchmarks/bench_train.py --impls=pytensor_att,torch_att_gru   # any subset

The model: embedding 256, GRU encoder 512, GRU decoder 512 fed c at every step, the deep
output layer (width 256) and a softmax over 10,000 words; batch 64, source and target length
30, no padding; masked cross-entropy, full backward pass, SGD with global-norm clipping.

Implementations, each in its own process, run in rotating order for --rounds rounds with the
same thread settings (OMP/OpenBLAS/MKL threads and torch.set_num_threads):
- pytensor:          model.Model, Cho's GRU (reset before the recurrent matmul), the default;
- pytensor_ra:       model.Model with reset_after=True, the nn.GRU convention;
- pytensor_lstm:     model.Model with cell=lstm in every slot (recurrence.py's generic loop);
- pytensor_mgu:      model.Model with cell=benchmarks.mgu:MGU, a cell written only as `recur`
                     in a file of its own (recurrence.py's generic loop);
- torch_gru:         PyTorch with fused nn.GRU layers (reset after; the decoder reads
                     [embedding; c] as its input, so c's projection is repeated per step);
- torch_lstm:        the same on fused nn.LSTM layers;
- torch_loop:        PyTorch with a hand-written Cho GRU cell in a Python loop
                     (benchmarks/torch_reference.py), masks and all, as model.Model;
- torch_mgu_loop:    the same loop with the minimal gated unit's step;
- pytensor_att, pytensor_att_lstm, pytensor_att_mgu: model.Model with bidirectional=true
                     and attention=bahdanau (GRU, LSTM, MGU in every slot); the attention
                     decoder runs on recurrence.py's loop, derived from its `attend`;
- pytensor_att_if, pytensor_att_cov: the GRU attention model with input_feeding=true, and
                     with attention=coverage: stateful decoders on the same loop;
- pytensor_att_if_scan, pytensor_att_cov_scan: the same two with every loop under
                     pytensor.scan (fast_loop=False), the path a step that cannot run alone takes;
- torch_att_gru, torch_att_lstm, torch_att_mgu: the same model as a PyTorch user writes it
                     (torch_reference.TorchAttentionModel): a fused bidirectional encoder
                     (nn.GRU, nn.LSTM; a loop for the MGU), then a Python loop of one cell
                     (nn.GRUCell, nn.LSTMCell, the MGU) with additive attention, keys
                     computed once per batch; torch_att_if and torch_att_cov add input
                     feeding and coverage to the nn.GRUCell loop (the same equations,
                     tests/test_torch_reference.py).
- jax, jax_lstm, jax_mgu, jax_att, jax_att_lstm, jax_att_mgu: the pytensor rows' models
                     under --mode=JAX (pip install -r requirements-jax.txt): every cell
                     under pytensor.scan, lowered to jax.lax.scan and compiled by XLA; the
                     table's last column compares each with the CVM row of the same model.
                     Their compile time is PyTensor's and XLA's at the first call; beam
                     search (stepped from Python) is measured for the CVM rows only.
Each row's ratio divides by its reference (REFERENCES): nn.GRU for our GRUs, nn.LSTM for our
LSTM, the hand-written loop of the same cell for the MGU, the PyTorch attention model of the
same cell for ours.

Reported per implementation: median training s/step and target tokens/s after warm-up;
greedy decoding tokens/s (64 sentences, 30 steps); for attention models, beam search (beam
5, decode.beam_search's own code over each model's compiled step) in hypothesis-steps per
second; compile time, cold (empty compile cache, first round) and cached (later rounds); peak RSS of the process; achieved GFLOP/s (matmul
FLOPs counted from the shapes, backward = 2x forward) as a fraction of numpy's float32
matmul peak, measured in the same run with the same threads. Writes JSON and prints a table.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = dict(E=256, H=512, V=10000, B=64, T=30)
# --size=default: the model `make train` trains (E 128, H 256, KJV's 6,000-word vocabulary);
# --size=seed: the original example's 1,000 hidden units.
OTHER_SIZES = {"default": dict(E=128, H=256, V=6000), "seed": dict(H=1000, B=128)}
IMPLS = ("pytensor", "pytensor_ra", "pytensor_lstm", "pytensor_mgu", "torch_gru", "torch_lstm", "torch_loop",
         "torch_mgu_loop", "pytensor_att", "pytensor_att_lstm", "pytensor_att_mgu", "torch_att_gru", "torch_att_lstm",
         "torch_att_mgu", "pytensor_att_if", "pytensor_att_cov", "pytensor_att_if_scan", "pytensor_att_cov_scan",
         "torch_att_if", "torch_att_cov")
REFERENCES = {"pytensor_att_if": "torch_att_if", "pytensor_att_cov": "torch_att_cov",
              "pytensor_att_if_scan": "pytensor_att_if", "pytensor_att_cov_scan": "pytensor_att_cov",
              "pytensor": "torch_gru", "pytensor_ra": "torch_gru", "pytensor_lstm": "torch_lstm",
              "pytensor_mgu": "torch_mgu_loop", "torch_loop": "torch_gru", "pytensor_att": "torch_att_gru",
              "pytensor_att_lstm": "torch_att_lstm", "pytensor_att_mgu": "torch_att_mgu"}
# Model settings of our implementations; gates per cell, for the FLOP count.
ATTENTION = {"bidirectional": True, "attention": "bahdanau"}
OURS = {"pytensor": {}, "pytensor_ra": {"reset_after": True}, "pytensor_lstm": {"cell": "lstm"},
        "pytensor_mgu": {"cell": "benchmarks.mgu:MGU"}, "pytensor_att": ATTENTION,
        "pytensor_att_lstm": {**ATTENTION, "cell": "lstm"}, "pytensor_att_mgu": {**ATTENTION, "cell": "benchmarks.mgu:MGU"},
        "pytensor_att_if": {**ATTENTION, "input_feeding": True}, "pytensor_att_cov": {**ATTENTION, "attention": "coverage"}}
OURS.update(pytensor_att_if_scan=OURS["pytensor_att_if"], pytensor_att_cov_scan=OURS["pytensor_att_cov"])
SCAN = {"pytensor_att_if_scan", "pytensor_att_cov_scan"}  # every module's loop under pytensor.scan
FEEDING = {"pytensor_att_if", "pytensor_att_if_scan", "torch_att_if"}  # input feeding's matmuls in the FLOPs
GATES = {"pytensor": 3, "pytensor_ra": 3, "pytensor_lstm": 4, "pytensor_mgu": 2, "torch_gru": 3, "torch_lstm": 4,
         "torch_loop": 3, "torch_mgu_loop": 2, "pytensor_att": 3, "pytensor_att_lstm": 4, "pytensor_att_mgu": 2,
         "torch_att_gru": 3, "torch_att_lstm": 4, "torch_att_mgu": 2, "pytensor_att_if": 3, "pytensor_att_cov": 3,
         "pytensor_att_if_scan": 3, "pytensor_att_cov_scan": 3, "torch_att_if": 3, "torch_att_cov": 3}
ATTENTIVE = {"pytensor_att", "pytensor_att_lstm", "pytensor_att_mgu", "torch_att_gru", "torch_att_lstm", "torch_att_mgu",
             "pytensor_att_if", "pytensor_att_cov", "pytensor_att_if_scan", "pytensor_att_cov_scan", "torch_att_if",
             "torch_att_cov"}
# The same models under --mode=JAX (every cell under pytensor.scan, lowered to one lax.scan),
# each beside the CVM row of the same model: "x CVM" in the table.
JAX_ROWS = {"jax": "pytensor", "jax_lstm": "pytensor_lstm", "jax_mgu": "pytensor_mgu", "jax_att": "pytensor_att",
            "jax_att_lstm": "pytensor_att_lstm", "jax_att_mgu": "pytensor_att_mgu"}
IMPLS += tuple(JAX_ROWS)
for _jax, _cvm in JAX_ROWS.items():
    OURS[_jax], GATES[_jax] = OURS[_cvm], GATES[_cvm]
    REFERENCES[_jax] = REFERENCES[_cvm]
    if _cvm in ATTENTIVE:
        ATTENTIVE.add(_jax)


def flops(E, H, V, B, T, G=3, attention=False, feeding=False):
    """Matmul FLOPs of one training step and of one greedy decoding step (2 per multiply-add),
    for a cell with G gates (GRU 3, LSTM 4, MGU 2).

    Without attention the decoder's per-step input width is counted as E: c's projection
    (B, H) x (H, GH) is computed once per sequence, as model.Model does. With attention
    (bidirectional encoder, C = 2H, attention width H) each decoder step also projects the
    query, scores T source positions and reads the context, whose projection it adds; with
    input feeding also the attentional vector's layer and its projection."""
    mm = lambda m, k, n: 2 * m * k * n  # noqa: E731
    N = B * T
    if not attention:
        forward = (mm(N, E, G * H) + mm(N, H, G * H)  # encoder: input projection, recurrence
                   + mm(B, H, H) + mm(B, H, G * H)  # init, c's projection into the decoder
                   + mm(N, E, G * H) + mm(N, H, G * H)  # decoder
                   + mm(N, H + E, E) + mm(B, H, E)  # deep output layer
                   + mm(N, E, V))  # softmax layer
        decode_step = mm(B, E, G * H) + mm(B, H, G * H) + mm(B, H + E, E) + mm(B, E, V)
        return 3 * forward, decode_step
    C = 2 * H
    attend = mm(B, H, H) + mm(N, H, 1) + mm(N, 1, C)  # query, scores (with v), context: per step
    decode_step = attend + mm(B, E + C, G * H) + mm(B, H, G * H) + mm(B, H + E + C, E) + mm(B, E, V)
    if feeding:
        decode_step += mm(B, H + C, H) + mm(B, H, G * H)
    forward = (2 * (mm(N, E, G * H) + mm(N, H, G * H))  # both encoder directions
               + mm(B, C, H) + mm(N, C, H)  # init, the keys
               + T * decode_step)  # the decoder, teacher-forced
    return 3 * forward, decode_step


def batch(rng, V, B, T):
    """Source (T, B) and target (T + 1, B) ids: BOS, T tokens; ids 3.. avoid PAD/BOS/EOS."""
    src = rng.integers(3, V, size=(T, B)).astype("int32")
    tgt = rng.integers(3, V, size=(T + 1, B)).astype("int32")
    tgt[0] = 1
    return src, tgt


# ---- workers: one implementation, one process --------------------------------------------


def run_pytensor(args, settings):
    sys.path.insert(0, ROOT)
    import numpy as np

    t0 = time.perf_counter()
    import decode
    from model import Model, ModelConfig

    import_s = time.perf_counter() - t0
    s = SIZES
    cfg = ModelConfig(embed_size=s["E"], hidden_size=s["H"], src_vocab_size=s["V"], tgt_vocab_size=s["V"],
                      **settings)
    model = Model(cfg, mode="JAX" if args.worker in JAX_ROWS else args.mode)
    for module in model.modules.values() if args.worker in SCAN else ():
        getattr(module, "cell", module).fast_loop = False
    if args.device == "gpu" and args.worker in JAX_ROWS:
        import jax

        if jax.default_backend() != "gpu":
            sys.exit(f"--device=gpu: JAX runs on {jax.default_backend()} (pip install \"jax[cuda13]==0.10.2\")")
    t0 = time.perf_counter()
    step = model.compile_train(optimizer="sgd", grad_clip=1.0)
    train_compile = time.perf_counter() - t0
    t0 = time.perf_counter()
    decode_fn = decode.compile_decode(model)
    decode_compile = time.perf_counter() - t0
    src, tgt = batch(np.random.default_rng(0), s["V"], s["B"], s["T"])
    lr = np.float32(0.01)
    train = [timed(lambda: step(src, tgt, lr))[0] for _ in range(args.warmup + args.steps)][args.warmup:]
    loss = float(step(src, tgt, lr)[0])
    decode, decode_tokens = [], 0
    for i in range(args.warmup + args.decode_reps):
        seconds, (ys, _) = timed(lambda: model.decode(src, max_len=s["T"]))
        if i >= args.warmup:
            decode.append(seconds)
            decode_tokens = ys.size  # steps run x sentences (the scan stops when all ended)
    if model.mode_name == "JAX":  # compiled at the first call of each shape, during warm-up
        train_compile = sum(seconds for _, seconds in step.compiles)
        decode_compile = sum(seconds for _, seconds in decode_fn.compiles)
    result = dict(train_s=train, decode_s=decode, decode_tokens=decode_tokens, loss=loss, import_s=import_s,
                  train_compile_s=train_compile, decode_compile_s=decode_compile)
    if model.has_attention and model.mode_name != "JAX":  # beam search steps from Python: CVM's case
        result["beam_rows_per_s"] = beam_rate(model, src, args)
    return result


def beam_rate(model, src, args):
    """Hypothesis-steps per second of decode.beam_search (beam 5, T steps at most) over
    `model`'s compiled step: its rows are counted, since two models' beams narrow
    differently. The median of --decode_reps searches after one untimed one."""
    import types

    import decode

    f_init, f_next = model.compile_step()
    rows = [0]

    def counted(y_prev, *rest):
        rows[0] += len(y_prev)
        return f_next(y_prev, *rest)

    shim = types.SimpleNamespace(compile_step=lambda: (f_init, counted), memory_names=model.memory_names,
                                 mode_name=getattr(model, "mode_name", "CVM"))
    rates = []
    for i in range(1 + args.decode_reps):
        rows[0] = 0
        seconds, _ = timed(lambda: decode.beam_search(shim, src, beam_size=5, max_len=SIZES["T"]))
        if i:
            rates.append(rows[0] / seconds)
    return statistics.median(rates)


def run_torch(args, impl):
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    torch.manual_seed(0)
    gpu = args.device == "gpu"
    if gpu:
        if not torch.cuda.is_available():
            sys.exit("--device=gpu: PyTorch sees no CUDA device (a CUDA build of torch and a GPU are needed)")
        torch.set_default_device("cuda")  # the models' parameters and every tensor they make
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from torch_reference import TorchAttentionModel, TorchGRUModel, TorchLSTMModel, mgu_step

    s = SIZES
    model = {"torch_gru": lambda: TorchGRUModel(s["E"], s["H"], s["V"]),
             "torch_lstm": lambda: TorchLSTMModel(s["E"], s["H"], s["V"]),
             "torch_loop": lambda: torch_loop_model(s["E"], s["H"], s["V"]),
             "torch_mgu_loop": lambda: torch_loop_model(s["E"], s["H"], s["V"], 2, mgu_step),
             "torch_att_gru": lambda: TorchAttentionModel(s["E"], s["H"], s["V"], cell="gru"),
             "torch_att_lstm": lambda: TorchAttentionModel(s["E"], s["H"], s["V"], cell="lstm"),
             "torch_att_mgu": lambda: TorchAttentionModel(s["E"], s["H"], s["V"], cell="mgu"),
             "torch_att_if": lambda: TorchAttentionModel(s["E"], s["H"], s["V"], input_feeding=True),
             "torch_att_cov": lambda: TorchAttentionModel(s["E"], s["H"], s["V"], coverage=True)}[impl]()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    src, tgt = (torch.from_numpy(a.astype("int64")).to("cuda" if gpu else "cpu")
                for a in batch(np.random.default_rng(0), s["V"], s["B"], s["T"]))
    sync = torch.cuda.synchronize if gpu else (lambda: None)  # a GPU runs asynchronously

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        loss = model.loss(src, tgt)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        sync()
        return loss

    def greedy():
        out = model.greedy(src, s["T"])
        sync()
        return out

    train = [timed(train_step)[0] for _ in range(args.warmup + args.steps)][args.warmup:]
    loss = float(train_step())
    with torch.no_grad():
        decode = [timed(greedy)[0] for _ in range(args.warmup + args.decode_reps)]
    result = dict(train_s=train, decode_s=decode[args.warmup:], decode_tokens=s["T"] * s["B"], loss=loss,
                  train_compile_s=None, decode_compile_s=None)  # eager: nothing to compile
    if impl in ATTENTIVE and not gpu:  # the same beam search code, over PyTorch's steps
        sys.path.insert(0, ROOT)
        result["beam_rows_per_s"] = beam_rate(model, src.numpy().astype("int32"), args)
    return result


def torch_loop_model(E, H, V, G=3, step=None):
    """benchmarks/torch_reference.TorchSeq2Seq (a cell of G gates in a Python loop; Cho's GRU
    by default) with fresh weights."""
    import numpy as np
    from torch_reference import TorchSeq2Seq, cho_gru_step

    rng = np.random.default_rng(0)
    u = lambda *shape: rng.uniform(-0.05, 0.05, size=shape).astype("float32")  # noqa: E731
    params = {"src_embed.W": u(V, E), "tgt_embed.W": u(V, E), "encoder.W": u(E, G * H),
              "encoder.U": u(H, G * H), "encoder.b": u(G * H), "init.W": u(H, H), "init.b": u(H),
              "decoder.W": u(E + H, G * H), "decoder.U": u(H, G * H), "decoder.b": u(G * H),
              "readout.W": u(H + E + H, E), "readout.b": u(E), "ffout.W": u(E, V), "ffout.b": u(V)}
    return TorchSeq2Seq(params, H, E, step or cho_gru_step)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def worker(args):
    if args.worker in OURS:
        result = run_pytensor(args, OURS[args.worker])
    else:
        result = run_torch(args, args.worker)
    import resource

    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


# ---- the parent: rounds, the matmul peak, the table -----------------------------------------


def matmul_peak(n=2048, reps=10):
    """numpy float32 a @ b, n x n, best of `reps`: this machine's practical matmul peak."""
    import numpy as np

    a = np.random.default_rng(0).standard_normal((n, n)).astype("float32")
    a @ a
    best = min(timed(lambda: a @ a)[0] for _ in range(reps))
    return 2 * n**3 / best / 1e9


def spawn(impl, args, env):
    cmd = [sys.executable, os.path.abspath(__file__), f"--worker={impl}", f"--threads={args.threads}",
           f"--steps={args.steps}", f"--warmup={args.warmup}", f"--decode_reps={args.decode_reps}",
           f"--mode={args.mode}", f"--size={args.size}", f"--device={args.device}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"{impl} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def summarise(runs, peak):
    s = SIZES
    out = {}
    for impl, results in runs.items():
        train_flops, decode_step_flops = flops(**SIZES, G=GATES[impl], attention=impl in ATTENTIVE,
                                               feeding=impl in FEEDING)
        train = statistics.median(t for r in results for t in r["train_s"])
        decode = statistics.median(t for r in results for t in r["decode_s"])
        decode_tokens = results[0]["decode_tokens"]
        compiles = [None if r["train_compile_s"] is None else r["train_compile_s"] + r["decode_compile_s"]
                    for r in results]
        out[impl] = dict(
            train_s_per_step=train,
            train_tokens_per_s=s["B"] * s["T"] / train,
            decode_tokens_per_s=decode_tokens / decode,
            decode_s=decode,
            compile_cold_s=compiles[0],
            compile_cached_s=statistics.median(compiles[1:]) if len(compiles) > 1 and compiles[0] is not None else None,
            peak_rss_mb=max(r["peak_rss_mb"] for r in results),
            train_gflops=train_flops / train / 1e9,
            train_fraction_of_peak=train_flops / train / 1e9 / peak,
            decode_gflops=decode_step_flops * decode_tokens / s["B"] / decode / 1e9,
            final_loss=results[-1]["loss"],
            beam_rows_per_s=statistics.median(r["beam_rows_per_s"] for r in results) if "beam_rows_per_s" in results[0]
            else None,
            runs=results,
        )
    for impl, row in out.items():
        ref = out.get(REFERENCES.get(impl))
        row["reference"] = REFERENCES.get(impl) if ref else None
        row["train_ratio"] = row["train_tokens_per_s"] / ref["train_tokens_per_s"] if ref else None
        row["decode_ratio"] = row["decode_tokens_per_s"] / ref["decode_tokens_per_s"] if ref else None
        row["beam_ratio"] = row["beam_rows_per_s"] / ref["beam_rows_per_s"] if ref and row["beam_rows_per_s"] else None
        cvm = out.get(JAX_ROWS.get(impl))
        row["cvm_train_ratio"] = row["train_tokens_per_s"] / cvm["train_tokens_per_s"] if cvm else None
        row["cvm_decode_ratio"] = row["decode_tokens_per_s"] / cvm["decode_tokens_per_s"] if cvm else None
    return out


def table(summary, peak):
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    lines = [f"matmul peak (numpy float32 2048^2): {peak:.0f} GFLOP/s",
             "| implementation | reference | train s/step | train tok/s | x reference | decode tok/s | x reference "
             "| beam 5 rows/s | x reference | compile cold / cached s | peak RSS MB | GFLOP/s (of peak) "
             "| train, decode x CVM |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for impl, r in summary.items():
        lines.append(
            f"| {impl} | {r['reference'] or '-'} | {r['train_s_per_step']:.3f} | {r['train_tokens_per_s']:.0f} | {fmt(r['train_ratio'], '.2f')} "
            f"| {r['decode_tokens_per_s']:.0f} | {fmt(r['decode_ratio'], '.2f')} "
            f"| {fmt(r['beam_rows_per_s'], '.0f')} | {fmt(r['beam_ratio'], '.2f')} "
            f"| {fmt(r['compile_cold_s'], '.1f')} / {fmt(r['compile_cached_s'], '.1f')} | {r['peak_rss_mb']:.0f} "
            f"| {r['train_gflops']:.0f} ({100 * r['train_fraction_of_peak']:.0f}%) "
            f"| {fmt(r['cvm_train_ratio'], '.2f')}, {fmt(r['cvm_decode_ratio'], '.2f')} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="pytensor and torch_gru, 1 round of 3 steps, then ours again for the cached compile (< 2 min)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of all implementations, in rotating order")
    ap.add_argument("--steps", type=int, default=10, help="timed training steps per round")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps (and decodes) before timing")
    ap.add_argument("--decode_reps", type=int, default=5, help="timed greedy decodes per round")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for every implementation")
    ap.add_argument("--impls", default=",".join(IMPLS), help=f"comma-separated subset of {','.join(IMPLS)}")
    ap.add_argument("--mode", default="CVM", help="PyTensor compile mode for ours")
    ap.add_argument("--out", default=None, help="JSON output (default benchmarks/bench_train[_quick].json)")
    ap.add_argument("--size", choices=("bench", "default", "seed"), default="bench",
                    help="bench: E 256, H 512, V 10,000, B 64; default: E 128, H 256, V 6,000, B 64 (the make train "
                         "model); seed: H 1,000, B 128 (the original example's size)")
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                    help="gpu: PyTorch rows on CUDA (no beam search), jax rows on JAX's GPU (its CUDA build); "
                         "CVM rows stay on the CPU")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    SIZES.update(OTHER_SIZES.get(args.size, {}))
    if args.worker:
        return worker(args)
    impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    unknown = sorted(set(impls) - set(IMPLS))
    if unknown:
        ap.error(f"unknown implementation(s) {', '.join(unknown)}; choose from {', '.join(IMPLS)}")
    if any(i.startswith("torch") for i in impls):
        try:
            import torch  # noqa: F401
        except ImportError:
            sys.exit("PyTorch is not installed: pip install torch==2.13.0 (the CPU build), or pass --impls=pytensor")
    if args.quick:  # ours and nn.GRU only, one round
        args.rounds, args.steps, args.decode_reps, args.warmup = 1, 3, 2, 1
        impls = [i for i in impls if i in ("pytensor", "torch_gru")] if args.impls == ",".join(IMPLS) else impls
    out_path = args.out or os.path.join(ROOT, "benchmarks", f"bench_train{'_quick' if args.quick else ''}.json")

    threads = str(args.threads)
    env = dict(os.environ, OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads, MKL_NUM_THREADS=threads,
               XLA_FLAGS=f"--xla_cpu_multi_thread_eigen={'true' if args.threads > 1 else 'false'} "
                         f"intra_op_parallelism_threads={threads}")
    os.environ.update(OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads)  # for the peak below
    # Each of our implementations gets its own empty compile cache: its first run is a cold
    # compile, later ones are cached.
    caches = {impl: tempfile.mkdtemp(prefix=f"bench-{impl}-cache-") for impl in impls}
    runs = {impl: [] for impl in impls}

    def run(impl):
        flags = ",".join(f for f in (env.get("PYTENSOR_FLAGS", ""), f"compiledir={caches[impl]}") if f)
        runs[impl].append(spawn(impl, args, dict(env, PYTENSOR_FLAGS=flags)))

    try:
        # Round r starts at implementation r: the order rotates. In --quick, ours runs twice
        # (cold, then cached compile) and the rest once.
        for r in range(args.rounds):
            for impl in impls[r % len(impls):] + impls[: r % len(impls)]:
                print(f"round {r + 1}/{args.rounds}: {impl} ...", flush=True)
                run(impl)
        if args.quick:
            for impl in (i for i in impls if i in OURS):
                print(f"{impl} again (cached compile) ...", flush=True)
                run(impl)
    finally:
        for cache in caches.values():
            shutil.rmtree(cache, ignore_errors=True)
    peak = matmul_peak()
    summary = summarise(runs, peak)
    report = dict(sizes=SIZES, device=args.device, threads=args.threads, quick=args.quick, rounds=args.rounds, steps=args.steps,
                  matmul_peak_gflops=peak, train_gflop_per_step={i: flops(**SIZES, G=GATES[i], attention=i in ATTENTIVE)[0] / 1e9 for i in impls},
                  machine=machine(), results=summary)
    with open(out_path, "w") as f:
        json.dump(report, f, indent=1)
    print(table(summary, peak))
    print(f"wrote {os.path.relpath(out_path)}")


def machine():
    import platform

    info = dict(cpus=os.cpu_count(), platform=platform.platform(), python=platform.python_version())
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return info


if __name__ == "__main__":
    main()
