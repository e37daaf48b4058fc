"""Train the encoder-decoder on a prepared dataset.

    python train.py                                   # next-verse prediction on KJV
    python train.py --dataset=mybook --max_minutes=480  # your text (data/text/prepare.py), overnight
    python train.py config/kjv_night.toml             # KJV overnight, regularised
    python train.py config/reverse.toml               # the synthetic reverse task
    python train.py --init_from=resume                # continue a stopped run exactly
    python train.py --init_from=out/kjv/ckpt_best.npz --out_dir=out/kjv_tuned --learning_rate=1e-3 --rnn_dropout=0.2
    python train.py --help                            # every setting
    mpiexec -n 4 python train.py ...                  # data-parallel over MPI (distributed.py)

Writes <out_dir> (out/<dataset> unless given): ckpt_latest.npz, ckpt_best.npz and the last
keep_last ckpt_step<N>.npz (each written atomically; never with NaN/inf weights), log.jsonl
(one JSON object per evaluation), steps.jsonl (the training loss every log_interval steps),
loss.png, train.log (what the run printed) and settings.toml (its settings, a config file). A
run locks its folder; a scratch run refuses a folder holding another run unless --overwrite=true.
"""
import dataclasses
import math
import os
import signal
import sys
import time
import traceback
import uuid
from dataclasses import dataclass

import numpy as np

import compiled
import distributed
import modes
import optim
from checkpoint import CheckpointError, checkpoint_path
from configurator import ConfigError, configure, require, setting
from decode import MAX_LEN
from dataset import Batcher, DataError, check_prepared_as, dataset_dir, load_dataset
from model import Model, ModelConfig
from model_config import REGULARISERS
from progress import Progress, notices
from runs import (ConsoleLog, Run, RunError, RunFolder, TrainState, evaluate_and_checkpoint, learning_rate, read_log,
                  run_dir, save_run, say_changes, tensorboard_installed, write_log)
from scoring import print_val_samples, read_references

# With skip_nonfinite, this many non-finite batches in a row mean the model has diverged.
MAX_SKIPPED_IN_A_ROW = 20
MAX_MINUTES = 525_600  # a year: far beyond any run, and within what a progress bar can count


@dataclass
class TrainConfig:
    dataset: str = setting("kjv", "a folder under data/ written by its prepare.py, or a path")
    out_dir: str = setting("", "where checkpoints, log.jsonl and loss.png go; empty = out/<dataset>")
    init_from: str = setting("scratch", "scratch; resume from <out_dir>/ckpt_latest.npz; or a checkpoint's path: "
                                        "a new run from its weights (fine-tuning)")
    overwrite: bool = setting(False, "scratch only: replace the run already in out_dir (its checkpoints and log)")
    batch_size: int = setting(64, "pairs per step")
    batch_tokens: int = setting(0, "0 = batch_size pairs a step; N = as many as fit in N padded tokens (rows x longest)")
    optimizer: str = setting("adam", f"{' or '.join(optim.OPTIMIZERS)} (each module's getUpdates)")
    learning_rate: float = setting(5e-3, "peak learning rate")
    min_lr: float = setting(1e-4, "cosine decay ends here, at max_iters or at max_minutes, whichever comes first")
    warmup_iters: int = setting(100, "linear warm-up steps")
    grad_clip: float = setting(1.0, "clip the global gradient norm to this; 0 = off")
    max_iters: int = setting(700, "stop after this many steps (the default run: about 5 min); "
                                  "given --max_minutes alone, no step limit")
    max_minutes: float = setting(0.0, "stop after this many minutes of training, resumes included; 0 = no limit; "
                                      f"at most {MAX_MINUTES:,} (a year)")
    patience: int = setting(0, "stop after this many evaluations without a better val loss; 0 = never")
    eval_interval: int = setting(200, "validate and checkpoint every this many steps")
    log_interval: int = setting(20, "append the mean training loss of every N steps to steps.jsonl; 0 = off")
    tensorboard: bool = setting(False, "also write the logs as TensorBoard scalars to <out_dir>/tensorboard")
    keep_last: int = setting(2, "also keep the last N evaluations' checkpoints as ckpt_step<N>.npz; 0 = none")
    eval_exact_match: int = setting(500, "val pairs decoded for exact match (tasks that use it)")
    eval_bleu: int = setting(500, "val pairs translated greedily for BLEU and chrF (datasets with references)")
    num_samples: int = setting(3, "val sources to decode and print at the end")
    max_decode_len: int = setting(60, f"longest decoded output (at most {MAX_LEN})")
    seed: int = setting(1337, "data order; the batch order is fixed by (seed, epoch)")
    mode: str = setting(modes.DEFAULT_MODE, f"compile mode: {', '.join(modes.MODES)}")
    skip_nonfinite: bool = setting(False, "skip a batch whose loss or gradient is NaN/inf (counted) instead of stopping")
    mpi_check_interval: int = setting(100, "under mpiexec: compare the ranks' parameters this often; 0 = never")


def check(cfg, mcfg):
    for settings in (cfg, mcfg):  # inf and NaN pass every range check below, so refuse them first
        for field in dataclasses.fields(settings):
            value = getattr(settings, field.name)
            require(not isinstance(value, float) or math.isfinite(value), f"{field.name}={value}: must be a finite number")
    require(cfg.init_from in ("scratch", "resume") or cfg.init_from.endswith(".npz"),
            f"init_from={cfg.init_from!r}: use scratch, resume, or the path of a checkpoint (.npz) to fine-tune")
    require(cfg.optimizer in optim.OPTIMIZERS, f"optimizer={cfg.optimizer!r}: use {' or '.join(optim.OPTIMIZERS)}")
    require(not cfg.tensorboard or tensorboard_installed(), "tensorboard=true: pip install -r requirements-tensorboard.txt")
    require(cfg.mode in modes.MODES, f"mode={cfg.mode!r}: use one of {', '.join(modes.MODES)}")
    modes.compile_mode(cfg.mode)  # mode=JAX without JAX: one line, before a run folder is made
    for name in ("batch_size", "eval_interval", "max_decode_len"):
        require(getattr(cfg, name) > 0, f"{name}={getattr(cfg, name)}: must be positive")
    require(cfg.max_decode_len <= MAX_LEN, f"max_decode_len={cfg.max_decode_len}: must be at most {MAX_LEN}")
    require(cfg.max_minutes <= MAX_MINUTES,
            f"max_minutes={cfg.max_minutes:g}: must be at most {MAX_MINUTES:,} (a year)")
    require(cfg.max_iters > 0 or (cfg.max_iters == 0 and cfg.max_minutes > 0),
            f"max_iters={cfg.max_iters}: must be positive (0, no step limit, only with max_minutes)")
    mcfg.check()
    require(cfg.learning_rate > 0, f"learning_rate={cfg.learning_rate}: must be positive")
    require(0 <= cfg.min_lr <= cfg.learning_rate, f"min_lr={cfg.min_lr}: must be in [0, learning_rate]")
    for name in ("warmup_iters", "grad_clip", "max_minutes", "eval_exact_match", "eval_bleu", "num_samples", "batch_tokens",
                 "mpi_check_interval", "keep_last", "seed", "patience"):
        require(getattr(cfg, name) >= 0, f"{name}={getattr(cfg, name)}: must not be negative")


def fine_tuned(path, mcfg, explicit, mode):
    """A new run's model from the checkpoint at `path`: its architecture and weights, with the
    regularisers given now (model_config.REGULARISERS); no optimizer state, no run state."""
    saved = Model.load(path, mode=mode)
    changes = {k: getattr(mcfg, k) for k in explicit if hasattr(mcfg, k)}
    fixed = [f"{k}={v}" for k, v in sorted(changes.items()) if k not in REGULARISERS and v != getattr(saved.config, k)]
    require(not fixed, f"init_from={path}: a fine-tuned run keeps its model's architecture: {', '.join(fixed)}")
    config = dataclasses.replace(saved.config, **{k: v for k, v in changes.items() if k in REGULARISERS})
    model = Model(config, saved.src_vocab, saved.tgt_vocab, mode=mode)
    for mine, theirs in zip(model.params, saved.params):
        mine.set_value(theirs.get_value())
    return model


def init_or_resume(cfg, mcfg, explicit, comm):
    """The Run to train: a new model, or the one in <out_dir>/ckpt_latest.npz with the saved
    settings (flags given now win) and its log cut back to the checkpoint's step."""
    is_root = comm is None or comm.Get_rank() == 0
    folder = RunFolder(cfg.out_dir) if is_root else None  # refuses a folder another run is writing
    if cfg.init_from == "resume":
        model = Model.load(checkpoint_path(cfg.out_dir, "latest"), mode=cfg.mode)
        saved = dict(model.checkpoint_state)
        state = TrainState(**{f.name: saved[f.name] for f in dataclasses.fields(TrainState) if f.name in saved})
        resumed = dataclasses.replace(TrainConfig(), **saved.get("train_config", {}))
        for key in explicit & {f.name for f in dataclasses.fields(cfg)}:
            setattr(resumed, key, getattr(cfg, key))  # flags given now win over the saved run
        resumed.init_from, resumed.out_dir = "resume", cfg.out_dir
        if resumed.mode != model.mode_name:  # the run's saved mode, unless --mode says otherwise
            model.mode_name, model.mode = resumed.mode, modes.compile_mode(resumed.mode)
        changed = [f"{k}={getattr(mcfg, k)} (the checkpoint's: {getattr(model.config, k)})" for k in sorted(explicit)
                   if hasattr(mcfg, k) and getattr(mcfg, k) != getattr(model.config, k)]
        require(not changed, f"cannot change architecture settings on resume: {', '.join(changed)}")
        check(resumed, model.config)
        if is_root:
            say_changes(dataclasses.replace(TrainConfig(), **saved.get("train_config", {})), resumed, state)
        cfg = resumed
    elif folder is not None and (existing := folder.holds_a_run()) and not cfg.overwrite:
        raise RunError(f"out_dir={cfg.out_dir} holds a run ({existing}): continue it with --init_from=resume, "
                       "or replace it with --overwrite=true")

    data_dir = dataset_dir(cfg.dataset)
    meta, src_vocab, tgt_vocab, splits = load_dataset(data_dir, need=("train", "val"))
    references = read_references(data_dir, "val", len(splits["val"])) if meta.get("bleu") else None
    if cfg.init_from == "resume":
        missing = [side for side, v in (("source", model.src_vocab), ("target", model.tgt_vocab)) if v is None]
        if missing:
            raise CheckpointError(f"{checkpoint_path(cfg.out_dir, 'latest')}: holds no {' or '.join(missing)} "
                                  "vocabulary (damaged?); resume from another checkpoint of the run (ckpt_best.npz "
                                  "or a ckpt_step<N>.npz: copy it to ckpt_latest.npz)")
        if model.tgt_vocab != tgt_vocab or model.src_vocab != src_vocab:
            raise DataError(f"{data_dir}: its vocabulary differs from the checkpoint's; "
                            "re-run its prepare.py with the settings the run used")
        check_prepared_as(data_dir, meta, model.checkpoint_state.get("data", {}))
        for name in ("log.jsonl", "steps.jsonl") if is_root else ():  # rows after the checkpoint would repeat
            write_log(os.path.join(cfg.out_dir, name), read_log(os.path.join(cfg.out_dir, name), upto=state.step))
    else:
        require(not mcfg.tie_src_tgt or src_vocab == tgt_vocab,
                f"tie_src_tgt=true needs one vocabulary for source and target; {data_dir} has "
                f"{len(src_vocab)} source and {len(tgt_vocab)} target words, not the same list")
        mcfg.src_vocab_size, mcfg.tgt_vocab_size = len(src_vocab), len(tgt_vocab)
        if cfg.init_from == "scratch":
            mcfg.check_memory()
            model = Model(mcfg, src_vocab, tgt_vocab, mode=cfg.mode)
        else:
            model = fine_tuned(cfg.init_from, mcfg, explicit, cfg.mode)
            if model.tgt_vocab != tgt_vocab or model.src_vocab != src_vocab:
                raise DataError(f"{data_dir}: its vocabulary differs from {cfg.init_from}'s; fine-tuning needs data "
                                "prepared with the same vocabulary")
        state = TrainState()
        if is_root:
            folder.clear()  # --overwrite: the old run's checkpoints and log go now
    if os.environ.get("SEQ2SEQ_TEST_POISON"):  # fault injection for tests: "param:row" set to NaN
        name, row = os.environ["SEQ2SEQ_TEST_POISON"].split(":")
        next(p for p in model.params if p.name == name).get_value(borrow=True)[int(row)] = np.nan
    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    return Run(cfg, model, state, meta, splits, references, comm, folder, run_id)


def train(run, step_fn, batcher, bar):
    """The loop. Returns why it ended: "max_iters", "max_minutes", "patience", "signal:
    <name>" or "stopped: <reason>" (divergence), having saved what should be saved."""
    cfg, state = run.cfg, run.state
    stop_signals = []  # Ctrl-C and SIGTERM only raise this flag; the step in flight finishes

    def on_signal(signum, frame):
        if stop_signals:
            raise KeyboardInterrupt  # a second one stops at once
        stop_signals.append(signal.Signals(signum).name)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    started, order, skipped_in_a_row = time.time(), batcher.epoch(state.epoch), 0
    why = "max_iters" if cfg.max_iters and state.step >= cfg.max_iters else None  # a finished run, resumed
    if cfg.max_minutes and state.train_seconds >= 60 * cfg.max_minutes:
        why = "max_minutes"
    if cfg.patience and state.evals_since_best >= cfg.patience:
        why = "patience"
    elapsed = lambda: state.train_seconds + time.time() - started  # noqa: E731
    first_step = state.step
    window, recent = {"loss": 0.0, "tokens": 0.0, "time": time.time()}, [0.0, 0.0]  # since the last eval, log
    noticed = (bool(cfg.max_iters) and not cfg.max_minutes) or state.step >= cfg.eval_interval  # said at the start, or by a run resumed
    while why is None:
        if state.batch_in_epoch >= len(order):
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0
            order = batcher.epoch(state.epoch)
        lr = learning_rate(cfg, state, elapsed())
        # Under MPI every rank stops at the same step: the request travels in the step's
        # all-reduce, and the time limit is rank 0's clock.
        timed_out = run.is_root and bool(cfg.max_minutes) and elapsed() > 60 * cfg.max_minutes
        loss, n_tokens, norm, stop = step_fn(order[state.batch_in_epoch], lr, timed_out or bool(stop_signals))
        state.batch_in_epoch += 1
        if not (math.isfinite(loss) and math.isfinite(norm)):  # the compiled step left the params as they were
            skipped_in_a_row += 1
            state.skipped_nonfinite += 1
            if not cfg.skip_nonfinite or skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW:
                detail = f"{skipped_in_a_row} batches in a row" if cfg.skip_nonfinite else f"gradient norm {norm}"
                why = f"stopped: step {state.step}: loss {loss}, {detail} (params were not updated)"
        else:
            skipped_in_a_row = 0
            state.step += 1
            state.tokens += int(n_tokens)
            window["loss"], window["tokens"] = window["loss"] + loss * n_tokens, window["tokens"] + n_tokens
            rate = window["tokens"] / max(1e-9, time.time() - window["time"])
            bar.update(state, elapsed(), loss=f"{loss:.3f}", tok_s=f"{rate:.0f}", lr=f"{lr:.1e}")
            recent = [recent[0] + loss * n_tokens, recent[1] + n_tokens]
            if run.is_root and cfg.log_interval and state.step % cfg.log_interval == 0:
                run.log("steps.jsonl", {"step": state.step, "train_loss": recent[0] / max(1.0, recent[1]), "lr": lr,
                                        "tokens_per_s": rate, "elapsed_s": elapsed()})
                recent = [0.0, 0.0]
            if not noticed and run.is_root and state.step - first_step >= min(20, cfg.eval_interval):
                noticed = [bar.write(line) for line in notices(run, elapsed())] or True  # speed known: say it early
            if cfg.max_iters and state.step >= cfg.max_iters:
                why = "max_iters"
            if run.is_root and (why or timed_out or state.step % cfg.eval_interval == 0):
                state.train_seconds, started = elapsed(), time.time()
                row = {"step": state.step, "epoch": state.epoch, "train_loss": window["loss"] / max(1.0, window["tokens"]),
                       "lr": lr, "tokens_per_s": rate, "elapsed_s": state.train_seconds}
                ended = evaluate_and_checkpoint(run, row)
                bar.write(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
                if not noticed:
                    noticed = [bar.write(line) for line in notices(run, state.train_seconds)] or True
                why = ended or why
                window = {"loss": 0.0, "tokens": 0.0, "time": time.time()}
        if why is None and stop:
            why = "max_minutes" if timed_out else f"signal: {stop_signals[0] if stop_signals else 'on another rank'}"
    if why.startswith("signal"):  # saved without an evaluation: the time trained so far goes with it
        state.train_seconds = elapsed()
    return why


def finish(run, why, start_step):
    """What a run says and saves when the loop has ended, by `why` (see train); the exit code.
    Rank 0 alone speaks; the end-of-run samples come last."""
    cfg, model, state = run.cfg, run.model, run.state
    if not run.is_root:
        return 0 if not why.startswith("stopped") else 1
    latest = run.path("latest")
    if why.startswith("stopped"):
        good = f"Last good checkpoint: {latest}" if os.path.exists(latest) else "No checkpoint was written"
        sys.exit(f"error: {why.removeprefix('stopped: ')}; stopping. {good}")
    if why.startswith("signal"):  # saved without an evaluation: a scheduler's grace period is short
        print(f"interrupted at step {state.step} ({why.removeprefix('signal: ')}): saving {latest}")
        save_run(run, "latest")
        return 0
    if state.step == start_step and why in ("max_iters", "max_minutes", "patience"):  # resumed, already finished
        value = getattr(cfg, why)
        done = {"max_iters": state.step, "max_minutes": math.ceil(state.train_seconds / 60)}.get(why, 0)
        larger = max(2 * value, done + value)  # beyond what the run has done already: it trains on
        print(f"this run had already stopped at step {state.step} ({why}={value}); to train on, resume with a "
              f"larger one: python train.py --init_from=resume --out_dir={cfg.out_dir} --{why}={larger:g}")
    if why == "max_minutes":
        print(f"stopping at step {state.step}: max_minutes={cfg.max_minutes} reached")
    if why == "patience":
        print(f"stopping at step {state.step}: val loss has not improved for {cfg.patience} evaluations "
              f"(patience={cfg.patience}); the best, step {state.best_step}, is {run.path('best')}")
    print(f"done: step {state.step}, best val loss {state.best_val_loss} at step {state.best_step}, "
          f"val unigram ppl {run.meta.get('val_unigram_ppl', 'n/a')}; checkpoints in {cfg.out_dir}")
    if compiled.compile_summary(model.functions):  # one per bucket of batch shapes (README, GPU)
        print(compiled.compile_summary(model.functions))
    print_val_samples(model, run.splits["val"], cfg.num_samples, cfg.max_decode_len, run.meta.get("reverse_source"),
                      np.random.default_rng(cfg.seed))
    return 0


def main(argv):
    cfg, mcfg = TrainConfig(), ModelConfig()
    explicit = configure([cfg, mcfg], argv, __doc__.strip())
    # None unless started by mpiexec with several processes; joined before any check, so that
    # a refusal on one rank ends every rank (distributed.exit) instead of leaving them waiting.
    comm = distributed.world()
    if cfg.max_minutes and "max_iters" not in explicit:
        cfg.max_iters = 0  # a time limit alone bounds the run: the default step count does not apply
    check(cfg, mcfg)
    cfg.out_dir = run_dir(cfg.out_dir, cfg.dataset)
    distributed.check_same_settings(comm, {**dataclasses.asdict(cfg), **dataclasses.asdict(mcfg)})
    run = init_or_resume(cfg, mcfg, explicit, comm)
    cfg, model, state = run.cfg, run.model, run.state
    if run.is_root:  # what the run says stays in its folder
        sys.stdout = ConsoleLog(sys.stdout, run.path("train.log"))
    say = print if run.is_root else (lambda *args, **kwargs: None)
    n_params = sum(p.get_value(borrow=True).size for p in model.params)
    ranks = f"; {comm.Get_size()} MPI ranks" if comm else ""
    say(f"{cfg.dataset}: {len(run.splits['train'])} train pairs, vocab {len(model.src_vocab)}/{len(model.tgt_vocab)}; "
        f"model {n_params / 1e6:.2f}M params{ranks}; run {run.run_id} in {cfg.out_dir}; compiling ({cfg.mode}) ...",
        flush=True)
    for line in notices(run, 0.0) if cfg.max_iters and not cfg.max_minutes else []:  # else known after 20 steps
        say(line)
    t0 = time.time()
    batcher = Batcher(run.splits["train"], cfg.batch_size, cfg.seed, max_tokens=cfg.batch_tokens)
    step_fn = distributed.training_step(model, run.comm, batcher, cfg.optimizer, cfg.grad_clip, cfg.mpi_check_interval)
    if run.is_root:
        model.compile_eval()
    if cfg.mode == "JAX":
        import jax

        say(f"graphs built in {time.time() - t0:.1f}s; JAX runs on {jax.default_backend()} ({jax.devices()[0]}) and "
            "compiles each bucket of batch shapes at its first step, within max_minutes", flush=True)
    else:
        say(f"compiled in {time.time() - t0:.1f}s", flush=True)
    bar = Progress(cfg, state, state.train_seconds, run.is_root)
    start_step = state.step
    try:
        why = train(run, step_fn, batcher, bar)
    except KeyboardInterrupt:
        sys.exit(f"error: interrupted twice: stopped at once without saving; {run.path('latest')} is the last checkpoint")
    finally:  # also before an error (e.g. an unwritable checkpoint) is printed below the bar
        bar.close()
    return finish(run, why, start_step)


if __name__ == "__main__":
    # Under mpiexec, an error on any one rank ends every rank (the others would wait in the
    # next all-reduce forever): distributed.exit says it and aborts the job.
    try:
        code = main(sys.argv[1:])
    except (ConfigError, DataError, CheckpointError, RunError, distributed.DivergenceError) as err:
        distributed.exit(f"error: {err}")
    except SystemExit as stop:
        distributed.exit(stop.code)
    except BaseException:
        distributed.exit(traceback.format_exc().rstrip())
    distributed.exit(code)
