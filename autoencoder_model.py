"""The network behind autoencoder.py's `NDS2SAEFactory` API: modules, graph, loss and its
compiled functions (autoencoder.py adds training, prediction and the zip).

Sequences are lists of (T_i, dim) arrays of any lengths; padding and masks are internal.
The model, built from `cells.GRU` and `layers.FF`:

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
one mask per sequence for all timesteps (layers.Dropout), in training only.
"""
import numpy as np

from flags import FLOATX
import cells
import checkpoint
import compiled
import layers
import modes
import optim
import pytensor
import pytensor.tensor as pt


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


class AutoencoderModel:
    """The network for checked settings (autoencoder.check_settings); `train_function`,
    `eval_function` and `predict_function` compile it once each."""

    def __init__(self, settings):
        self.settings = s = settings
        rng = np.random.default_rng(s["seed"])
        sizes = s["layer_sizes"]
        self.decoder_sizes = sizes[::-1] if s["symmetric"] else list(sizes)
        # Decoder layer j starts from the final state of encoder layer source[j], same width.
        L = len(sizes)
        self.init_source = [L - 1 - j for j in range(L)] if s["symmetric"] else list(range(L))
        self.code_size = sum(sizes)
        widths_in = [s["input_dim"]] + sizes[:-1]
        self.encoder = [cells.GRU(w, n, f"enc{j}", rng) for j, (w, n) in enumerate(zip(widths_in, sizes))]
        widths_in = [self.code_size] + self.decoder_sizes[:-1]
        self.decoder = [
            cells.GRU(w, n, f"dec{j}", rng) for j, (w, n) in enumerate(zip(widths_in, self.decoder_sizes))
        ]
        self.out = layers.FF(self.decoder_sizes[-1], s["output_dim"], "linear", "out", rng)
        self.stop = layers.FF(self.decoder_sizes[-1], 1, "linear", "stop", rng)
        self.modules = [*self.encoder, *self.decoder, self.out, self.stop]
        self.params = [p for m in self.modules for p in m.params]
        self.opt_state = []  # Adam's variables, once train_function has built them
        self.dropout = layers.Dropout(s["seed"] + 1)
        self.functions = {}
        self.mode = modes.compile_mode(s["mode"])

    def _dropout_masks(self, batch_size):
        """One (B, width) mask per layer output but the code's, the same at every step; []
        without keep_prob."""
        keep = self.settings["keep_prob"]
        if keep is None:
            return []
        widths = self.settings["layer_sizes"][:-1] + self.decoder_sizes
        return [self.dropout.mask((batch_size, w), 1.0 - keep) for w in widths]

    def _graph(self, x, x_mask, n_steps, drop=None):
        """x (T, B, I), x_mask (T, B) -> code (B, C), outputs (n, B, O), stop logits (n, B).

        `drop`: the masks of `_dropout_masks`, or None. The decoder runs n_steps: the target length in training,
        max_len in prediction (whose outputs are then cut where p_stop first passes 0.5).
        """
        drop = list(drop) if drop else None
        h, finals = x, []
        for j, cell in enumerate(self.encoder):
            if j > 0 and drop:
                h = h * drop.pop(0)[None]  # (T, B, H): the same mask at every step
            states = cell.scan(cell.project(h), x_mask, mode=self.settings["mode"])
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
            mode=self.mode,
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

    def train_function(self, pending_opt_state=None, path=None):
        """f(x, x_mask, y, y_mask, lr) -> (loss, mse, stop_loss, grad_norm): one Adam step on
        the clipped gradient, skipped when its norm is not finite (optim.guarded_updates).
        Adam starts from `pending_opt_state` ({name: array} from a zip at `path`) if given."""
        def build():
            x, x_mask, y, y_mask = self._inputs()
            lr = pt.scalar("lr", dtype=FLOATX)
            self.dropout.begin()
            loss, mse, stop_loss = self._loss(x, x_mask, y, y_mask, self._dropout_masks(x.shape[1]))
            grads = pytensor.grad(loss, self.params)
            updates, norm, self.opt_state = optim.guarded_updates(
                self.params, grads, self.settings["grad_clip"], lambda clipped: optim.adam(self.params, clipped, lr))
            if pending_opt_state:
                checkpoint.restore_optimizer(self.opt_state, pending_opt_state, f"{path}: optimizer.npz", prefix="")
            return compiled.function([x, x_mask, y, y_mask, lr], [loss, mse, stop_loss, norm], self.mode,
                                    updates + self.dropout.updates(), pad=True)

        return compiled.cached(self.functions, "train", build)

    def eval_function(self):
        """f(x, x_mask, y, y_mask) -> (loss, mse, stop_loss), no dropout, no updates."""
        def build():
            x, x_mask, y, y_mask = self._inputs()
            outs = self._loss(x, x_mask, y, y_mask)
            return compiled.function([x, x_mask, y, y_mask], list(outs), self.mode, pad=True)

        return compiled.cached(self.functions, "eval", build)

    def predict_function(self):
        """f(x, x_mask, max_len) -> (code (B, C), outputs (T, B, O), p_stop (T, B))."""
        def build():
            x, x_mask, _, _ = self._inputs()
            max_len = pt.iscalar("max_len")
            code, pred, stop_logit = self._graph(x, x_mask, max_len)
            return compiled.function([x, x_mask, max_len], [code, pred, pt.sigmoid(stop_logit)], self.mode,
                                    batch_axes=([1, 1, None], [0, 1, 1]))

        return compiled.cached(self.functions, "predict", build)
