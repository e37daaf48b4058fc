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
The model, built from `layers.GRU` and `layers.FF`:

    encoder   stacked GRUs over the input, sizes layer_sizes (masked scans)
    code      the final state of every encoder layer, concatenated      (B, sum(layer_sizes))
    decoder   stacked GRUs, sizes reversed(layer_sizes) if symmetric else layer_sizes;
              each layer starts from the final state of the encoder layer of the same size
              (the mirror image if symmetric) and the code is the first layer's input at
              every step, so decoding needs no fed-back outputs: training and prediction
              run the same graph (an "unconditioned" decoder, Srivastava et al. 2015)
    outputs   y_t = h_t W_y + b_y (linear), p_stop_t = sigmoid(h_t w_s + b_s)

The loss is the mean squared error per real output value plus the binary cross-entropy of
p_stop against "this is the last step", both masked. `predict` cuts each output at the first
step with p_stop > 0.5 (or at `max_len`). Dropout (keep_prob) is applied between layers, with
one mask per sequence for all timesteps, in training only.
"""
import io
import json
import os
import zipfile

import numpy as np
from tqdm import tqdm

import backend
import checkpoint
import layers
import optim
import pytensor
import pytensor.tensor as pt

FLOATX = layers.FLOATX
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
        self.mode = backend.DEFAULT_MODE  # pytensor compile mode
        self.output = None
        self._saved = None

    def set_output(self, path):
        """Save to `path` (a .zip) during training; if it exists, load its settings now and
        its weights and training state at `build()`."""
        self.output = str(path)
        self._saved = None
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
    backend.compile_mode(s["mode"])
    return s


def learning_rate(settings, iteration):
    """The step size at `iteration`: constant, or exponential decay from start_lr that
    reaches finish_lr at decay_steps and stays there."""
    args = settings["lrargs"]
    if settings["lrtype"] == "constant":
        return args["lr"]
    progress = min(iteration / args["decay_steps"], 1.0)
    return args["start_lr"] * (args["finish_lr"] / args["start_lr"]) ** progress


def check_sequences(seqs, dim, what):
    """A list of float32 (T_i, dim) arrays, or ValueError naming the bad item.

    1-D arrays are accepted as (T, 1) when dim is 1. Every sequence needs a step and only
    finite values."""
    if isinstance(seqs, np.ndarray) and seqs.dtype != object:
        seqs = list(seqs)  # a (B, T, dim) array: B sequences of equal length
    if not isinstance(seqs, (list, tuple)):
        raise ValueError(f"{what}: expected a list of arrays, got {type(seqs).__name__}")
    out = []
    for i, seq in enumerate(seqs):
        if np.iscomplexobj(seq):
            raise ValueError(f"{what}[{i}] holds complex numbers; give real and imaginary parts as dimensions")
        try:
            arr = np.asarray(seq, dtype=FLOATX)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{what}[{i}]: not a numeric array ({err})") from None
        if arr.ndim == 1 and dim == 1:
            arr = arr[:, None]
        if arr.ndim != 2 or arr.shape[1] != dim:
            raise ValueError(f"{what}[{i}] has shape {np.shape(seq)}; expected (length, {dim})")
        if arr.shape[0] == 0:
            raise ValueError(f"{what}[{i}] is empty; every sequence needs at least one step")
        bad = np.argwhere(~np.isfinite(arr))
        if len(bad):
            t, d = bad[0]
            raise ValueError(f"{what}[{i}] holds {arr[t, d]} at step {t}, dimension {d}")
        out.append(arr)
    return out


def pad(seqs):
    """List of (T_i, D) arrays -> padded (T, B, D) float32 and mask (T, B) float32."""
    T = max(len(s) for s in seqs)
    x = np.zeros((T, len(seqs), seqs[0].shape[1]), dtype=FLOATX)
    mask = np.zeros((T, len(seqs)), dtype=FLOATX)
    for b, seq in enumerate(seqs):
        x[: len(seq), b] = seq
        mask[: len(seq), b] = 1.0
    return x, mask


class NDS2SAE:
    """The autoencoder: `train`, `predict`, `encode`. Build it with `NDS2SAEFactory`."""

    def __init__(self, settings, output=None, saved=None):
        self.settings = check_settings(settings)
        self.output = output
        s = self.settings
        rng = np.random.default_rng(s["seed"])
        sizes = s["layer_sizes"]
        self.decoder_sizes = sizes[::-1] if s["symmetric"] else list(sizes)
        # Decoder layer j starts from the final state of encoder layer source[j], same width.
        L = len(sizes)
        self.init_source = [L - 1 - j for j in range(L)] if s["symmetric"] else list(range(L))
        self.code_size = sum(sizes)
        widths_in = [s["input_dim"]] + sizes[:-1]
        self.encoder = [layers.GRU(w, n, f"enc{j}", rng) for j, (w, n) in enumerate(zip(widths_in, sizes))]
        widths_in = [self.code_size] + self.decoder_sizes[:-1]
        self.decoder = [
            layers.GRU(w, n, f"dec{j}", rng) for j, (w, n) in enumerate(zip(widths_in, self.decoder_sizes))
        ]
        self.out = layers.FF(self.decoder_sizes[-1], s["output_dim"], "linear", "out", rng)
        self.stop = layers.FF(self.decoder_sizes[-1], 1, "linear", "stop", rng)
        self.modules = [*self.encoder, *self.decoder, self.out, self.stop]
        self.params = [p for m in self.modules for p in m.params]
        self.opt_state = []
        self.iteration = 0
        self.history = []  # one dict per display step
        self.longest_output = 0  # longest training output seen; sets predict's default max_len
        self.rng = np.random.default_rng(s["seed"] + 1)  # dropout masks
        self._functions = {}
        self._pending_opt = {}
        if saved is not None:
            self._restore(saved)

    # ---- the graph ----------------------------------------------------------------------

    def _dropout_widths(self):
        """Widths of the activations that get dropout: each layer's output but the code's."""
        return self.settings["layer_sizes"][:-1] + self.decoder_sizes

    def _graph(self, x, x_mask, n_steps, drop=None):
        """x (T, B, I), x_mask (T, B) -> code (B, C), outputs (n, B, O), stop logits (n, B).

        `drop`: one (B, width) mask per entry of `_dropout_widths()`, already scaled by
        1/keep_prob, or None. The decoder runs n_steps: the target length in training,
        max_len in prediction (whose outputs are then cut where p_stop first passes 0.5).
        """
        drop = list(drop) if drop else None
        h, finals = x, []
        for j, cell in enumerate(self.encoder):
            if j > 0 and drop:
                h = h * drop.pop(0)[None]  # (T, B, H): the same mask at every step
            states = cell.scan(cell.project(h), x_mask)
            h = states[0]  # (T, B, H)
            finals.append([s[-1] for s in states])  # (B, H) each, masking kept the last real
        code = pt.concatenate([f[0] for f in finals], axis=1)  # (B, C)
        dec_drop = drop or [None] * len(self.decoder)
        first_proj = self.decoder[0].project(code)  # (B, G*H), the same input every step
        init = [s for j in range(len(self.decoder)) for s in finals[self.init_source[j]]]
        n_state = [len(finals[self.init_source[j]]) for j in range(len(self.decoder))]

        # scan's order: previous outputs (every decoder layer's states), then
        # non-sequences (first_proj, the decoder dropout masks).
        def step(*args):
            n_flat = sum(n_state)
            prev, proj, masks = args[:n_flat], args[n_flat], args[n_flat + 1 :]
            new_states, row, h = [], 0, None
            for j, cell in enumerate(self.decoder):
                x_proj = proj if j == 0 else cell.project(h)
                new = cell.recur(x_proj, *prev[row : row + n_state[j]])
                new = list(new) if isinstance(new, (list, tuple)) else [new]
                new_states += new
                row += n_state[j]
                h = new[0] if not masks else new[0] * masks[j]  # (B, H)
            return [*new_states, self.out(h), self.stop(h)[:, 0]]  # ..., (B, O), (B,)

        masks = [m for m in dec_drop if m is not None]
        outputs = pytensor.scan(
            step,
            outputs_info=[*init, None, None],
            non_sequences=[first_proj, *masks],
            n_steps=n_steps,
            name="ae.decode",
            return_updates=False,
            mode=backend.compile_mode(self.settings["mode"]),
        )
        return code, outputs[-2], outputs[-1]

    def _loss(self, x, x_mask, y, y_mask, drop=None):
        """Mean squared error per real output value, the stop cross-entropy, and their sum."""
        _, pred, stop_logit = self._graph(x, x_mask, y.shape[0], drop)
        n_steps = pt.maximum(pt.sum(y_mask, dtype=FLOATX), 1.0)
        sq = pt.sum(pt.sqr(pred - y), axis=2) * y_mask  # (T, B)
        mse = pt.sum(sq, dtype=FLOATX) / (n_steps * np.float32(self.settings["output_dim"]))
        # 1 at each sequence's last real step: mask[t] and not mask[t+1].
        next_mask = pt.concatenate([y_mask[1:], pt.zeros_like(y_mask[:1])], axis=0)  # (T, B)
        is_last = y_mask * (1.0 - next_mask)
        bce = (pt.softplus(stop_logit) - is_last * stop_logit) * y_mask  # stable log-loss
        stop_loss = pt.sum(bce, dtype=FLOATX) / n_steps
        return mse + stop_loss, mse, stop_loss

    def _inputs(self):
        x = pt.tensor3("x", dtype=FLOATX)
        y = pt.tensor3("y", dtype=FLOATX)
        x_mask, y_mask = pt.matrix("x_mask", dtype=FLOATX), pt.matrix("y_mask", dtype=FLOATX)
        return x, x_mask, y, y_mask

    def _compiled(self, key, build):
        if key not in self._functions:
            self._functions[key] = build()
        return self._functions[key]

    def _train_fn(self):
        """f(x, x_mask, y, y_mask, lr, *dropout masks) -> (loss, mse, stop_loss, grad_norm)."""
        def build():
            x, x_mask, y, y_mask = self._inputs()
            lr = pt.scalar("lr", dtype=FLOATX)
            drop = []
            if self.settings["keep_prob"] is not None:
                drop = [pt.matrix(f"drop{i}", dtype=FLOATX) for i in range(len(self._dropout_widths()))]
            loss, mse, stop_loss = self._loss(x, x_mask, y, y_mask, drop)
            grads = pytensor.grad(loss, self.params)
            grads, norm = optim.clip_by_global_norm(grads, self.settings["grad_clip"])
            updates = optim.adam(self.params, grads, lr)
            finite = pt.isfinite(norm)  # a bad batch leaves the weights as they were
            updates = [(var, pt.switch(finite, new, var)) for var, new in updates]
            param_ids = {id(p) for p in self.params}
            self.opt_state = [var for var, _ in updates if id(var) not in param_ids]
            for var in self.opt_state:
                if var.name in self._pending_opt:
                    var.set_value(self._pending_opt.pop(var.name).astype(var.dtype))
            return pytensor.function(
                [x, x_mask, y, y_mask, lr, *drop], [loss, mse, stop_loss, norm],
                updates=updates, mode=backend.compile_mode(self.settings["mode"]),
            )

        return self._compiled("train", build)

    def _eval_fn(self):
        """f(x, x_mask, y, y_mask) -> (loss, mse, stop_loss), no dropout, no updates."""
        def build():
            x, x_mask, y, y_mask = self._inputs()
            outs = self._loss(x, x_mask, y, y_mask)
            return pytensor.function([x, x_mask, y, y_mask], list(outs),
                                     mode=backend.compile_mode(self.settings["mode"]))

        return self._compiled("eval", build)

    def _predict_fn(self):
        """f(x, x_mask, max_len) -> (code (B, C), outputs (T, B, O), p_stop (T, B))."""
        def build():
            x, x_mask, _, _ = self._inputs()
            max_len = pt.iscalar("max_len")
            code, pred, stop_logit = self._graph(x, x_mask, max_len)
            return pytensor.function([x, x_mask, max_len], [code, pred, pt.sigmoid(stop_logit)],
                                     mode=backend.compile_mode(self.settings["mode"]))

        return self._compiled("predict", build)

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

    def _dropout_masks(self, batch_size):
        keep = self.settings["keep_prob"]
        if keep is None:
            return []
        return [
            (self.rng.random((batch_size, w)) < keep).astype(FLOATX) / np.float32(keep)
            for w in self._dropout_widths()
        ]

    def evaluate(self, gen, batch_size=100, max_batches=100000):
        """Mean loss, MSE per value and stop loss over one pass of `gen` (until last_batch),
        weighted by output steps."""
        eval_fn, totals, weight = self._eval_fn(), np.zeros(3), 0.0
        for _ in range(max_batches):
            in_seq, out_seq, last = self._batch(gen, batch_size, "valid generator")
            y, y_mask = pad(out_seq)
            n = float(y_mask.sum())
            totals += n * np.array(eval_fn(*pad(in_seq), y, y_mask), dtype=np.float64)
            weight += n
            if last:
                return dict(zip(("loss", "mse", "stop_loss"), (totals / weight).tolist()))
        raise ValueError(f"valid generator gave {max_batches} batches without last_batch=True")

    def train(self, train_generator, valid_generator, n_iterations=3000, batch_size=100,
              display_step=100):
        """Train until `n_iterations` in all (a resumed model continues from its saved
        iteration). Every `display_step` iterations: validate, print, and save to the output
        zip. Ctrl-C saves before it stops. Returns the history, one dict per display step."""
        if n_iterations < 0 or batch_size < 1 or display_step < 1:
            raise ValueError(f"n_iterations={n_iterations}, batch_size={batch_size}, "
                             f"display_step={display_step}: need >= 0, >= 1, >= 1")
        train_fn = self._train_fn()
        bar = tqdm(total=n_iterations, initial=min(self.iteration, n_iterations), unit="it", dynamic_ncols=True)
        try:
            while self.iteration < n_iterations:
                in_seq, out_seq, _ = self._batch(train_generator, batch_size, "train generator")
                self.longest_output = max(self.longest_output, max(len(s) for s in out_seq))
                lr = np.float32(learning_rate(self.settings, self.iteration))
                loss, mse, stop_loss, norm = train_fn(
                    *pad(in_seq), *pad(out_seq), lr, *self._dropout_masks(len(in_seq))
                )
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
                    bar.write(f"iteration {self.iteration}: train loss {float(loss):.5f}, "
                              f"valid loss {val['loss']:.5f} (mse {val['mse']:.5f})")
                    self.save()
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
        fn = self._predict_fn()
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

    # ---- save and resume ----------------------------------------------------------------

    def save(self, path=None):
        """Write settings, weights, optimizer state, iteration, RNG state and history to a
        zip of .npz and .json members, atomically. Default path: the factory's output."""
        path = path or self.output
        if not path:
            return
        state = {"format_version": FORMAT_VERSION, "iteration": self.iteration,
                 "longest_output": self.longest_output, "history": self.history,
                 "rng": self.rng.bit_generator.state}
        members = {
            "settings.json": json.dumps(self.settings, indent=1).encode(),
            "state.json": json.dumps(state).encode(),
            "params.npz": _npz_bytes({p.name: p.get_value() for p in self.params}),
            "optimizer.npz": _npz_bytes({v.name: v.get_value() for v in self.opt_state} | self._pending_opt),
        }
        weights = {p.name: p.get_value(borrow=True) for p in self.params}
        if checkpoint.nonfinite(weights):
            raise ArchiveError(f"{path}: not written: {', '.join(checkpoint.nonfinite(weights)[:3])} hold NaN or inf; "
                               "the zip already there, if any, is unchanged")

        def write(f):
            with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as zf:
                for name, data in members.items():
                    zf.writestr(name, data)

        checkpoint.atomic_write(path, write)

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
            self.rng.bit_generator.state = state["rng"]
        except (KeyError, TypeError, ValueError) as err:
            raise ArchiveError(f"{path}: state.json is incomplete ({err})") from None
        self._pending_opt = dict(saved["optimizer"])


def _npz_bytes(arrays):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _safe_member(name):
    parts = name.replace("\\", "/").split("/")
    return not (name.startswith(("/", "\\")) or ":" in name or ".." in parts) and len(parts) == 1


def read_archive(path):
    """Settings, state, params and optimizer state from a saved zip, as plain dicts.

    Never unpickles (npz members load with allow_pickle=False) and never extracts to disk.
    Member paths that could escape a folder, unknown members and missing members are refused.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            for name in names:
                if not _safe_member(name):
                    raise ArchiveError(f"{path}: refused member path {name!r}")
            unexpected = sorted(set(names) - set(ZIP_MEMBERS))
            if unexpected:
                raise ArchiveError(f"{path}: unexpected members {', '.join(unexpected)}")
            missing = [m for m in ZIP_MEMBERS if m not in names]
            if missing:
                raise ArchiveError(f"{path}: missing members {', '.join(missing)}")
            raw = {name: zf.read(name) for name in ZIP_MEMBERS}
    except (zipfile.BadZipFile, EOFError, OSError) as err:
        raise ArchiveError(f"{path}: not a readable zip ({err})") from None
    saved = {"path": path}
    for name in ("settings.json", "state.json"):
        try:
            saved[name[:-5]] = json.loads(raw[name].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ArchiveError(f"{path}: {name} is not valid JSON ({err})") from None
    for name in ("params.npz", "optimizer.npz"):
        try:
            with np.load(io.BytesIO(raw[name]), allow_pickle=False) as data:
                saved[name[:-4]] = {key: data[key] for key in data.files}
        except Exception as err:  # pickled objects, truncation, garbage
            raise ArchiveError(f"{path}: {name} refused ({err})") from None
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
