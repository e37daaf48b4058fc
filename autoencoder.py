"""A real-valued sequence-to-sequence autoencoder with the `NDS2SAEFactory` API.

    from autoencoder import NDS2SAEFactory
    factory = NDS2SAEFactory()
    factory.set_output("toy.zip")            # save to, and resume from, this file
    factory.input_dim, factory.output_dim = 2, 1
    factory.layer_sizes = [50, 30]
    encoder = factory.build()
    encoder.train(train_gen, valid_gen, n_iterations=3000, batch_size=100, display_step=100)
    predicted = encoder.predict(test_seq)    # list of (T_i, output_dim) arrays
    encoded = encoder.encode(test_seq)       # list of fixed-size vectors

Sequences are lists of (T_i, dim) arrays of any lengths; padding and masks are internal.
The network (stacked GRUs, a code, an unconditioned decoder, a stop unit) is described and
built in autoencoder_model.py; this file holds the NDS2SAEFactory API, the settings and the zip.
"""
import json
import os

import numpy as np
from tqdm import tqdm

import modes
import checkpoint
import optim
from autoencoder_model import AutoencoderModel, check_sequences, pad

FORMAT_VERSION = 1
SETTINGS = ("input_dim", "output_dim", "layer_sizes", "symmetric", "keep_prob", "lrtype",
            "lrargs", "grad_clip", "seed", "mode")
ARCHITECTURE = ("input_dim", "output_dim", "layer_sizes", "symmetric")
ZIP_MEMBERS = ("settings.json", "state.json", "params.npz", "optimizer.npz")
LR_ARGS = {"constant": ("lr",), "expdecay": ("start_lr", "finish_lr", "decay_steps")}


class ArchiveError(ValueError):
    """A saved zip that cannot be used, with the file and the reason in the message."""


class NDS2SAEFactory:
    """Collects the settings, then `build()` returns an `NDS2SAE` ready to train.

    After `set_output(path)` on an existing zip, the settings are the saved ones (assign an
    attribute to change a training setting); `build()` then restores weights, optimizer state
    and iteration count, and refuses architecture settings that differ from the zip's.
    """

    def __init__(self):
        self.input_dim = None       # width of each input step
        self.output_dim = None      # width of each output step
        self.layer_sizes = [50, 30]  # encoder GRU widths, bottom to top
        self.symmetric = True       # decoder widths reversed(layer_sizes), else layer_sizes
        self.keep_prob = None       # dropout keep probability between layers; None = none
        self.lrtype = "constant"    # "constant" (lrargs: lr) or "expdecay"
        self.lrargs = dict(lr=0.001)  # expdecay: start_lr, finish_lr, decay_steps
        self.grad_clip = 1.0        # clip the global gradient norm to this; 0 = off
        self.seed = 0               # initial weights and dropout masks
        self.mode = modes.DEFAULT_MODE  # pytensor compile mode
        self.output = None
        self._saved = None

    def set_output(self, path):
        """Save to `path` (a .zip) during training; if it exists, load its settings now and
        its weights and training state at `build()`."""
        self.output = str(path)
        self._saved = None
        why = checkpoint.unwritable(self.output)  # said now, not after training
        if why:
            raise ArchiveError(f"set_output({self.output!r}): {why}")
        if os.path.exists(self.output):
            self._saved = read_archive(self.output)
            for key, value in self._saved["settings"].items():
                setattr(self, key, value)

    def settings(self):
        return {key: getattr(self, key) for key in SETTINGS}

    def build(self):
        settings = check_settings(self.settings())
        if self._saved is not None:
            saved = self._saved["settings"]
            for key in ARCHITECTURE:
                if settings[key] != saved[key]:
                    raise ArchiveError(
                        f"{self.output}: {key}={settings[key]!r} differs from the saved "
                        f"{saved[key]!r}; use another output file to train a new model"
                    )
        return NDS2SAE(settings, output=self.output, saved=self._saved)


def best_path(output):
    """Where the zip of the lowest validation loss goes, beside `output`: model.zip -> model_best.zip."""
    stem, ext = os.path.splitext(output)
    return f"{stem}_best{ext or '.zip'}"


def finite_number(key, value):
    """float(value), or ValueError naming the setting when it is not a finite number."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{key}={value!r}: not a number") from None
    if not np.isfinite(number):
        raise ValueError(f"{key}={value!r}: must be a finite number")
    return number


def check_settings(settings):
    """The settings with types normalised, or ValueError naming the bad one."""
    s = dict(settings)
    for key in ("input_dim", "output_dim"):
        if not isinstance(s[key], (int, np.integer)) or isinstance(s[key], bool) or s[key] < 1:
            raise ValueError(f"{key}={s[key]!r}: set it to a positive int before build()")
        s[key] = int(s[key])
    sizes = s["layer_sizes"]
    if isinstance(sizes, (int, np.integer)):
        sizes = [sizes]
    if not sizes or not all(isinstance(n, (int, np.integer)) and n >= 1 for n in sizes):
        raise ValueError(f"layer_sizes={s['layer_sizes']!r}: a non-empty list of positive ints")
    s["layer_sizes"] = [int(n) for n in sizes]
    s["symmetric"] = bool(s["symmetric"])
    if s["keep_prob"] is not None:
        s["keep_prob"] = finite_number("keep_prob", s["keep_prob"])
        if not 0.0 < s["keep_prob"] <= 1.0:
            raise ValueError(f"keep_prob={s['keep_prob']!r}: must be in (0, 1], or None")
    if s["lrtype"] not in LR_ARGS:
        raise ValueError(f"lrtype={s['lrtype']!r}: use one of {', '.join(LR_ARGS)}")
    args = dict(s["lrargs"] or {})
    needed = LR_ARGS[s["lrtype"]]
    if sorted(args) != sorted(needed):
        raise ValueError(f"lrargs={args!r}: lrtype {s['lrtype']!r} takes exactly {', '.join(needed)}")
    s["lrargs"] = {k: finite_number(f"lrargs[{k!r}]", v) for k, v in args.items()}
    if any(not v > 0 for v in s["lrargs"].values()):
        raise ValueError(f"lrargs={args!r}: every value must be positive")
    s["grad_clip"] = finite_number("grad_clip", s["grad_clip"])
    if s["grad_clip"] < 0:
        raise ValueError(f"grad_clip={s['grad_clip']!r}: must not be negative")
    if not isinstance(s["seed"], (int, np.integer)) or isinstance(s["seed"], bool) or s["seed"] < 0:
        raise ValueError(f"seed={s['seed']!r}: must be an int >= 0")
    s["seed"] = int(s["seed"])
    modes.compile_mode(s["mode"])
    return s


def learning_rate(settings, iteration):
    """The step size at `iteration`: constant, or exponential decay from start_lr that
    reaches finish_lr at decay_steps and stays there."""
    args = settings["lrargs"]
    if settings["lrtype"] == "constant":
        return args["lr"]
    return optim.decayed(args["start_lr"], args["finish_lr"], iteration / args["decay_steps"], "exponential")


class NDS2SAE(AutoencoderModel):
    """The autoencoder: `train`, `predict`, `encode`. Build it with `NDS2SAEFactory`."""

    def __init__(self, settings, output=None, saved=None):
        super().__init__(check_settings(settings))
        self.output = output
        self.iteration = 0
        self.history = []  # one dict per display step
        self.longest_output = 0  # longest training output seen; sets predict's default max_len
        self._pending_opt = {}  # a loaded zip's Adam state, set when train_function builds Adam
        if saved is not None:
            self._restore(saved)

    # ---- the three operations -----------------------------------------------------------

    def _batch(self, gen, batch_size, what):
        result = gen(batch_size)
        if not isinstance(result, tuple) or len(result) != 3:
            raise ValueError(f"{what} must return (in_seq, out_seq, last_batch), got {type(result).__name__}")
        in_seq, out_seq, last_batch = result
        in_seq = check_sequences(in_seq, self.settings["input_dim"], f"{what}: in_seq")
        out_seq = check_sequences(out_seq, self.settings["output_dim"], f"{what}: out_seq")
        if len(in_seq) != len(out_seq):
            raise ValueError(f"{what}: {len(in_seq)} input sequences but {len(out_seq)} output sequences")
        if not in_seq:
            raise ValueError(f"{what} returned an empty batch")
        return in_seq, out_seq, bool(last_batch)

    def evaluate(self, gen, batch_size=100, max_batches=10_000):
        """Mean loss, MSE per value and stop loss over one pass of `gen` (until last_batch),
        weighted by output steps. A pass longer than `max_batches` is an error (a generator
        that never says last_batch=True); one that takes more than 2 s shows its progress."""
        eval_fn, totals, weight = self.eval_function(), np.zeros(3), 0.0
        for _ in tqdm(range(max_batches), desc="validation", unit="batch", leave=False, delay=2):
            in_seq, out_seq, last = self._batch(gen, batch_size, "valid generator")
            y, y_mask = pad(out_seq)
            n = float(y_mask.sum())
            totals += n * np.array(eval_fn(*pad(in_seq), y, y_mask), dtype=np.float64)
            weight += n
            if last:
                return dict(zip(("loss", "mse", "stop_loss"), (totals / weight).tolist()))
        raise ValueError(f"valid generator gave {max_batches:,} batches without last_batch=True; it must end each "
                         "pass over the validation data with last_batch=True (evaluate's max_batches bounds a pass)")

    def train(self, train_generator, valid_generator, n_iterations=3000, batch_size=100,
              display_step=100):
        """Train until `n_iterations` in all (a resumed model continues from its saved
        iteration). Every `display_step` iterations: validate, print, and save to the output
        zip. Ctrl-C saves before it stops. Returns the history, one dict per display step."""
        if n_iterations < 0 or batch_size < 1 or display_step < 1:
            raise ValueError(f"n_iterations={n_iterations}, batch_size={batch_size}, "
                             f"display_step={display_step}: need >= 0, >= 1, >= 1")
        train_fn = self.train_function(self._pending_opt, self.output)
        self._pending_opt = {}
        bar = tqdm(total=n_iterations, initial=min(self.iteration, n_iterations), unit="it", dynamic_ncols=True)
        try:
            while self.iteration < n_iterations:
                in_seq, out_seq, _ = self._batch(train_generator, batch_size, "train generator")
                self.longest_output = max(self.longest_output, max(len(s) for s in out_seq))
                lr = np.float32(learning_rate(self.settings, self.iteration))
                loss, mse, stop_loss, norm = train_fn(*pad(in_seq), *pad(out_seq), lr)
                if not np.isfinite(norm):
                    raise FloatingPointError(
                        f"non-finite loss or gradient at iteration {self.iteration} "
                        f"(loss {loss}); the weights were left as they were"
                    )
                self.iteration += 1
                bar.update(1)
                bar.set_postfix(loss=f"{float(loss):.4f}", lr=f"{lr:.2g}", refresh=False)
                if self.iteration % display_step == 0 or self.iteration == n_iterations:
                    val = self.evaluate(valid_generator, batch_size)
                    record = {"iteration": self.iteration, "train_loss": float(loss),
                              "train_mse": float(mse), "valid_loss": val["loss"],
                              "valid_mse": val["mse"], "valid_stop_loss": val["stop_loss"]}
                    self.history.append(record)
                    best = val["loss"] <= min(r["valid_loss"] for r in self.history)
                    bar.write(f"iteration {self.iteration}: train loss {float(loss):.5f}, "
                              f"valid loss {val['loss']:.5f} (mse {val['mse']:.5f})" + (", the best" if best else ""))
                    self.save()
                    if best and self.output:  # beside the latest: a later jump in valid loss cannot cost it
                        self.save(best_path(self.output))
        except KeyboardInterrupt:
            self.save()
            raise
        finally:
            bar.close()
        return self.history

    def _run_predict(self, seqs, max_len, batch_size):
        seqs = check_sequences(seqs, self.settings["input_dim"], "input")
        if max_len < 1:
            raise ValueError(f"max_len={max_len}: must be at least 1")
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: must be a positive int")
        fn = self.predict_function()
        for start in range(0, len(seqs), batch_size):
            chunk = seqs[start : start + batch_size]
            yield len(chunk), fn(*pad(chunk), np.int32(max_len))

    def predict(self, test_seq, max_len=None, lengths=None, batch_size=256):
        """A list of (T_i, output_dim) arrays, each cut at the first step whose p_stop > 0.5,
        or at max_len (default: twice the longest training output).

        With `lengths` (one int per sequence), output i has exactly lengths[i] steps
        instead: the reconstruction at a known length, for scoring."""
        if max_len is None:
            max_len = 2 * self.longest_output if self.longest_output else 100
        if lengths is not None:
            lengths = [int(n) for n in lengths]
            if len(lengths) != len(test_seq) or min(lengths, default=1) < 1:
                raise ValueError(f"lengths: need one positive int per sequence ({len(test_seq)})")
            max_len = max(lengths)
        result = []
        for n, (_, pred, p_stop) in self._run_predict(test_seq, max_len, batch_size):
            for b in range(n):
                if lengths is not None:
                    length = lengths[len(result)]
                else:
                    stops = np.flatnonzero(p_stop[:, b] > 0.5)
                    length = stops[0] + 1 if len(stops) else len(p_stop)
                result.append(pred[:length, b].copy())
        return result

    def encode(self, test_seq, batch_size=256):
        """A list of code vectors, one (sum(layer_sizes),) array per input sequence: the
        final state of every encoder layer, concatenated."""
        return [c.copy() for _, (codes, _, _) in self._run_predict(test_seq, 1, batch_size)
                for c in codes]

    # ---- save and resume: a zip of JSON and .npz members (checkpoint.py writes and reads it) --

    def save(self, path=None):
        """Write settings, weights, optimizer state, iteration, RNG state and history to a
        zip of .npz and .json members, atomically. Default path: the factory's output."""
        path = path or self.output
        if not path:
            return
        weights = {p.name: p.get_value() for p in self.params}
        if checkpoint.nonfinite(weights):
            raise ArchiveError(f"{path}: not written: {', '.join(checkpoint.nonfinite(weights)[:3])} hold NaN or inf; "
                               "the zip already there, if any, is unchanged")
        state = {"format_version": FORMAT_VERSION, "iteration": self.iteration,
                 "longest_output": self.longest_output, "history": self.history, "rng": checkpoint.generator_state(self.dropout.rng)}
        checkpoint.save_zip(path, {
            "settings.json": json.dumps(self.settings, indent=1).encode(),
            "state.json": json.dumps(state).encode(),
            "params.npz": checkpoint.npz_bytes(weights),
            "optimizer.npz": checkpoint.npz_bytes({v.name: v.get_value() for v in self.opt_state} | self._pending_opt),
        })

    def _restore(self, saved):
        path = saved["path"]
        try:
            checkpoint.restore(self.params, saved["params"], f"{path}: params.npz", prefix="")
        except checkpoint.CheckpointError as err:
            raise ArchiveError(str(err)) from None
        state = saved["state"]
        try:
            self.iteration = int(state["iteration"])
            self.longest_output = int(state["longest_output"])
            self.history = list(state["history"])
            checkpoint.set_generator_state(self.dropout.rng, state["rng"])
        except (KeyError, TypeError, ValueError) as err:
            raise ArchiveError(f"{path}: state.json is incomplete ({err})") from None
        self._pending_opt = dict(saved["optimizer"])


def read_archive(path):
    """Settings, state, params and optimizer state from a saved zip, as plain dicts. Never
    unpickles and never extracts to disk (checkpoint.read_zip)."""
    try:
        raw = checkpoint.read_zip(path, ZIP_MEMBERS)
        saved = {"path": path}
        for name in ("settings.json", "state.json"):
            try:
                saved[name[:-5]] = json.loads(raw[name].decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise ArchiveError(f"{path}: {name} is not valid JSON ({err})") from None
        for name in ("params.npz", "optimizer.npz"):
            try:
                saved[name[:-4]] = checkpoint.load_npz(raw[name])
            except checkpoint.CheckpointError as err:
                raise ArchiveError(f"{path}: {name} refused ({err})") from None
    except checkpoint.CheckpointError as err:
        raise ArchiveError(str(err)) from None
    settings = saved["settings"]
    if not isinstance(settings, dict) or sorted(settings) != sorted(SETTINGS):
        raise ArchiveError(f"{path}: settings.json must hold exactly {', '.join(SETTINGS)}")
    try:
        saved["settings"] = check_settings(settings)
    except ValueError as err:
        raise ArchiveError(f"{path}: settings.json: {err}") from None
    if saved["state"].get("format_version") != FORMAT_VERSION:
        raise ArchiveError(f"{path}: format version {saved['state'].get('format_version')!r}, "
                           f"this code reads {FORMAT_VERSION}")
    return saved
