"""Train the encoder-decoder on a prepared dataset.

    python train.py                                   # next-verse prediction on KJV
    python train.py config/reverse.toml               # the synthetic reverse task
    python train.py --init_from=resume                # continue a stopped run exactly
    python train.py --help                            # every setting
    mpiexec -n 4 python train.py ...                  # data-parallel over MPI (distributed.py)

Writes <out_dir>/ckpt_latest.npz and ckpt_best.npz (atomically), log.jsonl (one JSON
object per evaluation) and loss.png.
"""
import dataclasses
import json
import math
import os
import re
import shutil
import signal
import sys
import time
from dataclasses import dataclass

import numpy as np

import backend
import distributed
import layers
from configurator import ConfigError, configure, require, setting
from dataset import Batcher, DataError, dataset_dir, eval_batches, load_dataset, make_batch, run_dir
from evaluate import bleu_tokenize, read_references, score, translate
from model import CheckpointError, Model, ModelConfig, checkpoint_path
from vocab import EOS_ID


# With skip_nonfinite, this many non-finite batches in a row mean the model has diverged.
MAX_SKIPPED_IN_A_ROW = 20
SNAPSHOT = re.compile(r"ckpt_step(\d+)\.npz")


@dataclass
class TrainConfig:
    dataset: str = setting("kjv", "a folder under data/ written by its prepare.py, or a path")
    out_dir: str = setting("", "where checkpoints, log.jsonl and loss.png go; empty = out/<dataset>")
    init_from: str = setting("scratch", "scratch, or resume from <out_dir>/ckpt_latest.npz")
    batch_size: int = setting(64, "pairs per step")
    optimizer: str = setting("adam", "adam or sgd (each module's getUpdates)")
    learning_rate: float = setting(5e-3, "peak learning rate")
    min_lr: float = setting(1e-4, "cosine decay ends here, at max_iters or at max_minutes, whichever comes first")
    warmup_iters: int = setting(100, "linear warm-up steps")
    grad_clip: float = setting(1.0, "clip the global gradient norm to this; 0 = off")
    max_iters: int = setting(700, "stop after this many steps (the default run: about 5 min)")
    max_minutes: float = setting(0.0, "also stop after this many minutes of training, resumes included; 0 = no limit")
    eval_interval: int = setting(200, "validate and checkpoint every this many steps")
    keep_last: int = setting(2, "also keep the last N evaluations' checkpoints as ckpt_step<N>.npz; 0 = none")
    eval_exact_match: int = setting(500, "val pairs decoded for exact match (tasks that use it)")
    eval_bleu: int = setting(500, "val pairs translated greedily for BLEU and chrF (datasets with references)")
    num_samples: int = setting(3, "val sources to decode and print at the end")
    max_decode_len: int = setting(60, "longest decoded output")
    seed: int = setting(1337, "data order; the batch order is fixed by (seed, epoch)")
    mode: str = setting(backend.DEFAULT_MODE, f"compile mode: {', '.join(backend.MODES)}")
    skip_nonfinite: bool = setting(False, "skip a batch whose loss or gradient is NaN/inf (counted) instead of stopping")
    mpi_check_interval: int = setting(100, "under mpiexec: compare the ranks' parameters this often; 0 = never")


def check(cfg, mcfg):
    for settings in (cfg, mcfg):  # inf and NaN pass every range check below, so refuse them first
        for field in dataclasses.fields(settings):
            value = getattr(settings, field.name)
            require(not isinstance(value, float) or math.isfinite(value), f"{field.name}={value}: must be a finite number")
    require(cfg.init_from in ("scratch", "resume"), f"init_from={cfg.init_from!r}: use scratch or resume")
    require(cfg.optimizer in ("adam", "sgd"), f"optimizer={cfg.optimizer!r}: use adam or sgd")
    require(cfg.mode in backend.MODES, f"mode={cfg.mode!r}: use one of {', '.join(backend.MODES)}")
    for name in ("batch_size", "max_iters", "eval_interval", "max_decode_len"):
        require(getattr(cfg, name) > 0, f"{name}={getattr(cfg, name)}: must be positive")
    for name in ("embed_size", "hidden_size", "embed_init_std"):
        require(getattr(mcfg, name) > 0, f"{name}={getattr(mcfg, name)}: must be positive")
    require(mcfg.encoder_layers > 0, f"encoder_layers={mcfg.encoder_layers}: must be positive")
    require(mcfg.attention in ("none", *layers.ATTENTIONS),
            f"attention={mcfg.attention!r}: use one of none, {', '.join(layers.ATTENTIONS)}")
    try:
        cell = layers.cell_class(mcfg.cell)
    except ValueError as err:
        raise ConfigError(f"cell={mcfg.cell!r}: {err}") from None
    require(not mcfg.reset_after or issubclass(cell, layers.GRU), f"reset_after=true is a GRU setting, not {mcfg.cell}'s")
    require(mcfg.attention_size >= 0, f"attention_size={mcfg.attention_size}: must not be negative")
    require(0 <= mcfg.dropout < 1, f"dropout={mcfg.dropout}: must be in [0, 1)")
    require(cfg.learning_rate > 0, f"learning_rate={cfg.learning_rate}: must be positive")
    require(0 <= cfg.min_lr <= cfg.learning_rate, f"min_lr={cfg.min_lr}: must be in [0, learning_rate]")
    for name in ("warmup_iters", "grad_clip", "max_minutes", "eval_exact_match", "eval_bleu", "num_samples",
                 "mpi_check_interval", "keep_last"):
        require(getattr(cfg, name) >= 0, f"{name}={getattr(cfg, name)}: must not be negative")


def learning_rate(cfg, step, elapsed_s=0.0):
    """Linear warm-up, then cosine decay from learning_rate to min_lr. The decay's progress
    is the larger of the step fraction (to max_iters) and, when max_minutes bounds the run,
    the time fraction, so a run cut by time still finishes its schedule."""
    if step < cfg.warmup_iters:
        return cfg.learning_rate * (step + 1) / cfg.warmup_iters
    progress = (step - cfg.warmup_iters) / max(1, cfg.max_iters - cfg.warmup_iters)
    if cfg.max_minutes:
        progress = max(progress, elapsed_s / (60 * cfg.max_minutes))
    progress = min(1.0, progress)
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.learning_rate - cfg.min_lr)


def evaluate(model, pairs, cfg, exact_match, references=None):
    """Validation metrics: loss and perplexity per target token (EOS included), plus
    greedy exact match on up to eval_exact_match pairs where the task uses it, and greedy
    BLEU and chrF on up to eval_bleu pairs where the data has references."""
    eval_fn = model.compile_eval()
    nll = n_tokens = 0.0
    for idx in eval_batches(pairs, cfg.batch_size):
        batch_nll, batch_n = eval_fn(*make_batch([pairs[i] for i in idx]))
        nll, n_tokens = nll + float(batch_nll), n_tokens + float(batch_n)
    metrics = {"val_loss": nll / n_tokens, "val_ppl": math.exp(min(nll / n_tokens, 50.0))}
    if exact_match and cfg.eval_exact_match:
        subset = pairs[: cfg.eval_exact_match]
        hits = 0
        for idx in eval_batches(subset, cfg.batch_size):
            src, _ = make_batch([subset[i] for i in idx])
            ys, _ = model.decode(src, max_len=cfg.max_decode_len)
            for row, i in zip(ys, idx):
                out = row[: np.argmax(row == EOS_ID)] if (row == EOS_ID).any() else row
                hits += len(out) == len(subset[i][1]) and bool(np.all(out == subset[i][1]))
        metrics["val_exact_match"] = hits / len(subset)
    if references is not None and cfg.eval_bleu:
        n = min(cfg.eval_bleu, len(pairs))
        hypotheses = translate(model, pairs[:n], cfg.batch_size, cfg.max_decode_len)
        scores = score(hypotheses, references[:n], bleu_tokenize(model.tgt_vocab))
        metrics["val_bleu"], metrics["val_chrf"] = scores["bleu"], scores["chrf"]
    return metrics


def keep_snapshots(latest, step, keep):
    """Hard-link the just-written ckpt_latest.npz as ckpt_step<step>.npz (a copy where links
    are not supported) and delete all but the newest `keep` of those."""
    if not keep:
        return
    folder = os.path.dirname(latest) or "."
    snapshot = os.path.join(folder, f"ckpt_step{step}.npz")
    tmp = snapshot + ".tmp"
    try:
        os.link(latest, tmp)
    except OSError:
        shutil.copyfile(latest, tmp)
    os.replace(tmp, snapshot)
    steps = sorted(int(m.group(1)) for m in map(SNAPSHOT.fullmatch, os.listdir(folder)) if m)
    for old in steps[:-keep]:
        os.remove(os.path.join(folder, f"ckpt_step{old}.npz"))


def logged_step(line):
    """The step of a log.jsonl line; infinity for a line a crash cut short."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


def plot_log(log_path, png_path):
    """loss.png: train and val loss against step, from log.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in open(log_path, encoding="utf-8")]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in ("train_loss", "val_loss"):
        points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        if points:
            ax.plot(*zip(*points), marker="o", label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy per token (nats)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


def print_samples(model, pairs, cfg, meta, rng):
    """Greedy and sampled outputs for a few validation sources, beside the reference."""
    if not cfg.num_samples or not pairs:
        return
    chosen = [pairs[i] for i in rng.choice(len(pairs), min(cfg.num_samples, len(pairs)), replace=False)]
    src, _ = make_batch(chosen)
    greedy, _ = model.decode(src, max_len=cfg.max_decode_len)
    sampled, _ = model.decode(src, max_len=cfg.max_decode_len, temperature=0.8, rng=rng)
    for (s, t), g, smp in zip(chosen, greedy, sampled):
        s = s[::-1] if meta.get("reverse_source") else s
        print(f"\n  source:    {model.src_vocab.text(s)}")
        print(f"  reference: {model.tgt_vocab.text(t)}")
        print(f"  greedy:    {model.tgt_vocab.text(g)}")
        print(f"  sampled:   {model.tgt_vocab.text(smp)}  (temperature 0.8)")


def main(argv):
    from tqdm import tqdm

    cfg, mcfg = TrainConfig(), ModelConfig()
    explicit = configure([cfg, mcfg], argv, __doc__.strip())
    check(cfg, mcfg)
    cfg.out_dir = run_dir(cfg.out_dir, cfg.dataset)
    comm = distributed.world()  # None unless started by mpiexec with several processes
    is_root = comm is None or comm.Get_rank() == 0  # only rank 0 logs and writes files
    say = print if is_root else (lambda *args, **kwargs: None)
    latest, best = (checkpoint_path(cfg.out_dir, name) for name in ("latest", "best"))
    log_path = os.path.join(cfg.out_dir, "log.jsonl")
    if cfg.init_from == "resume":
        model = Model.load(latest, mode=cfg.mode)
        state = model.checkpoint_state
        saved = dataclasses.replace(TrainConfig(), **state["train_config"])
        for key in explicit & {f.name for f in dataclasses.fields(cfg)}:
            setattr(saved, key, getattr(cfg, key))  # flags given now win over the saved run
        cfg, saved.init_from, saved.out_dir = saved, "resume", cfg.out_dir
        changed = [k for k in explicit if hasattr(mcfg, k) and getattr(mcfg, k) != getattr(model.config, k)]
        require(not changed, f"cannot change architecture settings on resume: {', '.join(changed)}")
        check(cfg, model.config)

    data_dir = dataset_dir(cfg.dataset)
    meta, src_vocab, tgt_vocab, splits = load_dataset(data_dir)
    references = read_references(data_dir, "val", len(splits["val"])) if meta.get("bleu") else None
    if cfg.init_from == "resume":
        if model.tgt_vocab != tgt_vocab or model.src_vocab != src_vocab:
            raise DataError(f"{data_dir}: its vocabulary differs from the checkpoint's; "
                            "re-run its prepare.py with the settings the run used")
        # Evaluations logged after the checkpoint (a crash in between) would be repeated; a
        # line cut short by a crash is dropped too.
        rows = [] if not os.path.exists(log_path) else [
            line for line in open(log_path, encoding="utf-8") if logged_step(line) <= state["step"]]
        if is_root:
            with open(log_path, "w", encoding="utf-8") as f:
                f.writelines(rows)
    else:
        mcfg.src_vocab_size, mcfg.tgt_vocab_size = len(src_vocab), len(tgt_vocab)
        model = Model(mcfg, src_vocab, tgt_vocab, mode=cfg.mode)
        state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "best_val_loss": None, "tokens": 0,
                 "skipped_nonfinite": 0}
        if is_root:
            os.makedirs(cfg.out_dir, exist_ok=True)
            open(log_path, "w").close()

    n_params = sum(p.get_value(borrow=True).size for p in model.params)
    ranks = f"; {comm.Get_size()} MPI ranks" if comm else ""
    say(f"{cfg.dataset}: {len(splits['train'])} train pairs, vocab {len(src_vocab)}/{len(tgt_vocab)}; "
        f"model {n_params / 1e6:.2f}M params{ranks}; compiling ({cfg.mode}) ...", flush=True)
    t0 = time.time()
    batcher = Batcher(splits["train"], cfg.batch_size, cfg.seed)
    if comm is None:
        fused = model.compile_train(cfg.optimizer, cfg.grad_clip)

        def train_step(indices, lr, stop):
            loss, n_tokens, norm = fused(*batcher.batch(indices), np.float32(lr))
            return float(loss), float(n_tokens), float(norm), stop
    else:
        train_step = distributed.DataParallelStep(model, comm, batcher, cfg.optimizer, cfg.grad_clip,
                                                  cfg.mpi_check_interval)
    if is_root:
        model.compile_eval()
    say(f"compiled in {time.time() - t0:.1f}s", flush=True)

    def save(path):
        state["train_config"] = dataclasses.asdict(cfg)
        state["train_seconds"] = elapsed()
        state["data"] = {"dataset": cfg.dataset, "reverse_source": bool(meta.get("reverse_source"))}
        try:
            model.save(path, state)
        except OSError as err:  # disk full, unwritable folder: the previous file is untouched
            raise CheckpointError(f"cannot write {path} ({err.strerror or err}); "
                                  "the checkpoint already there, if any, is unchanged") from None

    # Ctrl-C and SIGTERM (a scheduler's kill) only raise a flag; the loop saves and exits at
    # the end of the current step, never from the middle of a write. A second one stops at once.
    stop_signals = []

    def on_signal(signum, frame):
        if stop_signals:
            raise KeyboardInterrupt
        stop_signals.append(signal.Signals(signum).name)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    order = batcher.epoch(state["epoch"])
    start_step, start_time, skipped_in_a_row = state["step"], time.time(), 0
    trained_before = state.get("train_seconds", 0.0)  # training time of the run's earlier invocations
    elapsed = lambda: trained_before + time.time() - start_time  # noqa: E731
    window = {"loss": 0.0, "tokens": 0.0, "steps": 0, "time": time.time()}
    # Redraw twice a second on a terminal; every 30 s in a log file, which keeps it readable.
    bar = tqdm(total=cfg.max_iters, initial=start_step, unit="step", dynamic_ncols=True,
               mininterval=0.5 if sys.stderr.isatty() else 30, disable=not is_root)
    try:
        while state["step"] < cfg.max_iters:
            if state["batch_in_epoch"] >= len(order):
                state["epoch"], state["batch_in_epoch"] = state["epoch"] + 1, 0
                order = batcher.epoch(state["epoch"])
            lr = learning_rate(cfg, state["step"], elapsed())
            # Under MPI every rank must stop at the same step: the request travels in the
            # step's all-reduce, and the time limit is rank 0's clock.
            timed_out = is_root and bool(cfg.max_minutes) and elapsed() > 60 * cfg.max_minutes
            loss, n_tokens, norm, stop = train_step(order[state["batch_in_epoch"]], lr, timed_out or bool(stop_signals))
            interrupted = stop and not timed_out  # a signal, on this rank or another
            finite = math.isfinite(loss) and math.isfinite(norm)
            skipped_in_a_row = 0 if finite else skipped_in_a_row + 1
            if not finite and cfg.skip_nonfinite and skipped_in_a_row < MAX_SKIPPED_IN_A_ROW:
                # The compiled step left the params as they were; move on to the next batch.
                state["batch_in_epoch"] += 1
                state["skipped_nonfinite"] = state.get("skipped_nonfinite", 0) + 1
            elif not finite:
                bar.close()
                why = f"{skipped_in_a_row} batches in a row" if cfg.skip_nonfinite else f"gradient norm {norm}"
                sys.exit(f"error: step {state['step']}: loss {loss}, {why}; stopping "
                         f"(params were not updated). Last good checkpoint: {latest}")
            else:
                state["step"], state["batch_in_epoch"] = state["step"] + 1, state["batch_in_epoch"] + 1
                state["tokens"] += int(n_tokens)
                window["loss"] += loss * n_tokens
                window["tokens"] += n_tokens
                window["steps"] += 1
                rate = window["tokens"] / max(1e-9, time.time() - window["time"])
                bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{rate:.0f}", lr=f"{lr:.1e}", refresh=False)
                bar.update(1)
                at_eval = timed_out or state["step"] % cfg.eval_interval == 0 or state["step"] == cfg.max_iters
                if at_eval and is_root:
                    metrics = evaluate(model, splits["val"], cfg, meta.get("exact_match", False), references)
                    row = {"step": state["step"], "epoch": state["epoch"],
                           "train_loss": window["loss"] / max(1.0, window["tokens"]), **metrics,
                           "lr": lr, "tokens_per_s": rate, "elapsed_s": elapsed(),
                           "skipped_nonfinite": state.get("skipped_nonfinite", 0)}
                    with open(log_path, "a", encoding="utf-8") as f:
                        f.write(json.dumps(row) + "\n")
                    plot_log(log_path, os.path.join(cfg.out_dir, "loss.png"))
                    bar.write(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
                    if state["best_val_loss"] is None or metrics["val_loss"] < state["best_val_loss"]:
                        state["best_val_loss"] = metrics["val_loss"]
                        save(best)
                    save(latest)
                    keep_snapshots(latest, state["step"], cfg.keep_last)
                    window = {"loss": 0.0, "tokens": 0.0, "steps": 0, "time": time.time()}
            if interrupted:
                if is_root:
                    why = stop_signals[0] if stop_signals else "another rank was signalled"
                    bar.write(f"interrupted at step {state['step']} ({why}): saving {latest}")
                    save(latest)
                bar.close()
                return 0
            if stop:
                bar.write(f"stopping at step {state['step']}: max_minutes={cfg.max_minutes} reached")
                break
    except KeyboardInterrupt:
        sys.exit(f"error: interrupted twice: stopped at once without saving; {latest} is the last checkpoint")
    finally:  # also before an error (e.g. an unwritable checkpoint) is printed below the bar
        bar.close()
    if not is_root:
        return 0
    if state["step"] > start_step:
        save(latest)
    print(f"done: step {state['step']}, best val loss {state['best_val_loss']}, "
          f"val unigram ppl {meta.get('val_unigram_ppl', 'n/a')}; checkpoints in {cfg.out_dir}")
    print_samples(model, splits["val"], cfg, meta, np.random.default_rng(cfg.seed))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except (ConfigError, DataError, CheckpointError, distributed.DivergenceError) as err:
        sys.exit(f"error: {err}")
