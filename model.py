"""The Cho et al. 2014 RNN encoder-decoder: modules from `initModules()`, wired with scan.

    c      = encoder state after the last real source token     (B, H)
    h'_0   = tanh(c V + b)                                      the "init" module
    h'_t   = decoder([e(y_{t-1}); c], h'_{t-1})                 c is fed to every step
    o_t    = tanh([h'_t; e(y_{t-1}); c] W_o + b_o)              ... and to the output
    p(y_t) = softmax(o_t W_out + b_out)

With `attention` set (Bahdanau et al. 2015), c in the decoder and the output is replaced by a
context ctx_t that the decoder computes at each step from all encoder annotations. The
encoder can be bidirectional (annotations [forward; backward], c = [last fwd; first bwd])
and stacked, with dropout between layers in training.

Batches are (T, B) int32 id matrices, time first, padded with PAD_ID; masks are derived
from the padding. A target batch holds BOS y_1 .. y_n EOS, so the decoder reads tgt[:-1]
and predicts tgt[1:].
"""
import dataclasses
import json
from dataclasses import dataclass

import numpy as np

import backend
import decode
import kernels
import layers
import optim
import pytensor
import pytensor.tensor as pt
from checkpoint import FORMAT_VERSION, CheckpointError, read_arrays, restore, save_arrays
from configurator import setting
from vocab import PAD_ID, Vocab

@dataclass
class ModelConfig:
    """Architecture settings; saved in every checkpoint and restored from it."""

    embed_size: int = setting(128, "word vector width; also the deep output layer's width")
    hidden_size: int = setting(256, "encoder and decoder state width")
    init_seed: int = setting(1337, "seed of the parameter initialisation")
    # Measured: on KJV, 0.1 left the model at the unigram loss for 800 steps and 1.0 learns;
    # on the reverse task 0.1 reaches 99% exact match and 1.0 stalls near 92%.
    embed_init_std: float = setting(1.0, "std of the initial word vectors (see README)")
    cell: str = setting("gru", f"recurrent cell of every encoder and decoder slot: {', '.join(layers.CELLS)}, "
                               "a registered name, or module:Class")
    reset_after: bool = setting(False, "GRU only: reset gate after the recurrent matmul (nn.GRU's form), not before (Cho's)")
    encoder_layers: int = setting(1, "stacked encoder layers")
    bidirectional: bool = setting(False, "add a backward scan to every encoder layer")
    attention: str = setting("none", f"none (Cho 2014's fixed c), {' or '.join(layers.ATTENTIONS)}")
    attention_size: int = setting(0, "additive attention's hidden width; 0 = hidden_size")
    dropout: float = setting(0.0, "dropout between stacked encoder layers, training only")
    src_vocab_size: int = setting(0, "from the prepared data's vocabulary", derived=True)
    tgt_vocab_size: int = setting(0, "from the prepared data's vocabulary", derived=True)


def approx_param_count(cfg):
    """About how many parameters initModules() builds for `cfg` (gated cells counted as
    LSTMs, the largest stock cell), known before any memory is allocated."""
    E, H, dirs = cfg.embed_size, cfg.hidden_size, 2 if cfg.bidirectional else 1
    C, A = H * dirs, cfg.attention_size or H
    cell = lambda n_in: 4 * H * (n_in + H + 1)  # noqa: E731
    encoder = dirs * (cell(E) + (cfg.encoder_layers - 1) * cell(C))
    decoder = cell(E + C) + C * H + (H + E + C) * E + E * cfg.tgt_vocab_size
    attention = A * (H + C + 1) if cfg.attention != "none" else 0
    return (cfg.src_vocab_size + cfg.tgt_vocab_size) * E + encoder + decoder + attention


class Model:
    def __init__(self, config, src_vocab=None, tgt_vocab=None, mode=backend.DEFAULT_MODE):
        self.config = config
        self.mode_name, self.mode = mode, backend.compile_mode(mode)
        self.src_vocab, self.tgt_vocab = src_vocab, tgt_vocab
        self.rng = np.random.default_rng(config.init_seed)
        self.attentive = config.attention != "none"
        self.modules = self.initModules()
        self.params = [p for module in self.modules.values() for p in module.params]
        names = [p.name for p in self.params]
        if len(set(names)) != len(names):
            raise ValueError(f"parameter names must be unique, got {names}")
        self.opt_state = []  # shared variables written by the optimizer, see compile_train
        self._pending_opt_state = {}
        self.checkpoint_state = {}  # the saved `state` dict of a loaded checkpoint
        self._functions = {}
        # Dropout draws from this generator; training updates it, checkpoints save it.
        self.dropout_rng = pytensor.shared(np.random.default_rng(config.init_seed + 1), name="dropout_rng")
        self._rng_next = self.dropout_rng

    def initModules(self):
        """The model's modules, one line each: the place to edit. Every recurrent slot is a
        `Cell`, the class registered as `cell` (--cell=lstm); write `Cell = MyCell` below to
        try your own everywhere, or replace one line to change one slot, e.g.
        `modules["decoder"] = layers.LSTM([E, C], H, name="decoder", rng=rng)`. A module with
        `.frozen = True` is not trained; `.lr_scale = 0.1` slows its learning rate."""
        cfg, rng = self.config, self.rng
        E, H = cfg.embed_size, cfg.hidden_size
        C = H * (2 if cfg.bidirectional else 1)  # annotation width: [forward; backward]
        Cell = layers.cell_class(cfg.cell)
        options = {"reset_after": True} if cfg.reset_after else {}  # a GRU setting (train.check)

        def cell(input_size, name):
            return Cell(input_size, H, name=name, rng=rng, **options)

        modules = {
            "src_embed": layers.Embedding(cfg.src_vocab_size, E, "src_embed", rng, cfg.embed_init_std),
            "tgt_embed": layers.Embedding(cfg.tgt_vocab_size, E, "tgt_embed", rng, cfg.embed_init_std),
            "encoder": cell(E, "encoder"),
        }
        for layer in range(cfg.encoder_layers):
            name, width = ("encoder", E) if layer == 0 else (f"encoder{layer}", C)
            if layer > 0:  # stacked layers read the annotations of the layer below
                modules[name] = cell(width, name)
            if cfg.bidirectional:
                modules[f"{name}_bwd"] = cell(width, f"{name}_bwd")
        modules["init"] = layers.FF(C, H, "tanh", name="init", rng=rng)
        if self.attentive:
            attention = layers.ATTENTIONS[cfg.attention](H, C, cfg.attention_size or H, "decoder.attention", rng)
            modules["decoder"] = layers.AttentionDecoder(cell(E, "decoder"), C, attention, rng)
        else:
            modules["decoder"] = cell([E, C], "decoder")
        modules["readout"] = layers.FF([H, E, C], E, "tanh", name="readout", rng=rng)
        modules["ffout"] = layers.FF(E, cfg.tgt_vocab_size, "linear", name="ffout", rng=rng)
        return modules

    # ---- the symbolic graph -------------------------------------------------------------

    def encode(self, src, train=False):
        """src (Ts, B) int32 -> the memory the decoder reads, a dict of
        c (B, C): the encoder's summary (states after the last real token, both directions);
        annotations (Ts, B, C): the top layer's states at every source position;
        src_mask (Ts, B); and, for attention, keys (Ts, B, A)."""
        m, cfg = self.modules, self.config
        src_mask = pt.neq(src, PAD_ID).astype(layers.FLOATX)  # (Ts, B)
        x = m["src_embed"](src)  # (Ts, B, E)
        for layer in range(cfg.encoder_layers):
            name = "encoder" if layer == 0 else f"encoder{layer}"
            if layer > 0 and train and cfg.dropout > 0:
                x = self._dropout(x)
            fwd = m[name].scan(m[name].project(x), src_mask, mode=self.mode_name)[0]  # (Ts, B, H)
            # Masking carried each state past its padding, so fwd[-1] is after the last token.
            annotations, c = fwd, fwd[-1]  # (Ts, B, H), (B, H)
            if cfg.bidirectional:
                bwd_cell = m[f"{name}_bwd"]
                # Scanning backwards, padding comes first and leaves the zero state as it is.
                bwd = bwd_cell.scan(bwd_cell.project(x), src_mask, go_backwards=True, mode=self.mode_name)[0]
                bwd = bwd[::-1]  # (Ts, B, H), back in source order
                annotations = pt.concatenate([fwd, bwd], axis=2)  # (Ts, B, 2H)
                c = pt.concatenate([c, bwd[0]], axis=1)  # (B, 2H)
            x = annotations
        memory = {"c": c, "annotations": x, "src_mask": src_mask}
        if self.attentive and m["decoder"].attention.has_keys:
            memory["keys"] = m["decoder"].attention.keys(x)  # (Ts, B, A), once per batch
        return memory

    def memory_keys(self):
        """The memory entries the decoder reads, in the order compiled functions pass them."""
        if not self.attentive:
            return ("c",)
        return ("annotations", "src_mask") + (("keys",) if self.modules["decoder"].attention.has_keys else ())

    def _attended(self, memory):
        """The memory entries in the order AttentionDecoder.attend reads them (Luong's keys
        are the annotations themselves)."""
        return [memory.get("keys", memory["annotations"]), memory["annotations"], memory["src_mask"]]

    def _dropout(self, x):
        keep = np.float32(1.0 - self.config.dropout)
        self._rng_next, u = pt.random.uniform(size=x.shape, rng=self._rng_next, return_next_rng=True)
        return x * pt.lt(u, keep).astype(layers.FLOATX) / keep

    def decoder_init(self, memory):
        """The decoder's full initial state (a list, one entry per state tensor) from c."""
        return self.modules["decoder"].initial_state(self.modules["init"](memory["c"]))

    def decoder_step(self, y_prev, states, memory):
        """One decoding step: y_prev (B,) ids and the state list -> (new state list,
        logits (B, V), attention weights (Ts, B) or None)."""
        dec = self.modules["decoder"]
        emb = self.modules["tgt_embed"](y_prev)  # (B, E)
        if self.attentive:
            new, ctx, weights = dec.attend(dec.project(emb), *states, *self._attended(memory))
        else:
            new = dec.recur(dec.project(emb, memory["c"]), *states)
            new, ctx, weights = (list(new) if isinstance(new, (list, tuple)) else [new]), memory["c"], None
        return new, self.logits(new[0], emb, ctx), weights

    def decoder_states(self, emb, tgt_mask, memory):
        """Teacher-forced decoder over embedded inputs emb (T, B, E) -> h (T, B, H), the
        context the output reads ((T, B, C), or c (B, C) without attention), and the
        attention weights (T, Ts, B) or None."""
        dec = self.modules["decoder"]
        init = self.decoder_init(memory)
        if not self.attentive:
            x_proj = dec.project(emb, memory["c"])  # (T, B, G*H); c broadcast over T
            return dec.scan(x_proj, tgt_mask, init=init, mode=self.mode_name)[0], memory["c"], None
        n = len(init)
        attended = self._attended(memory)
        unique = list(dict.fromkeys(attended))  # Luong's keys are the annotations themselves
        positions = [unique.index(v) for v in attended]

        # scan's order: sequences (x_proj_t, m_t), the previous state, non-sequences (memory).
        def step(x_t, m_t, *args):
            prev, mem = args[:n], args[n:]
            new, ctx, weights = dec.attend(x_t, *prev, *(mem[i] for i in positions))
            m = m_t[:, None]  # (B, 1)
            return [*(m * s + (1.0 - m) * p for s, p in zip(new, prev)), ctx, weights]

        outputs = pytensor.scan(
            step,
            sequences=[dec.project(emb), tgt_mask],
            outputs_info=[*init, None, None],
            non_sequences=unique,
            name="decoder.scan",
            return_updates=False,
            mode=self.mode,
        )
        return outputs[0], outputs[-2], outputs[-1]

    def logits(self, h, y_prev_emb, c):
        """Unnormalised next-token scores from decoder states: (..., H) -> (..., V)."""
        return self.modules["ffout"](self.modules["readout"](h, y_prev_emb, c))

    def token_nll(self, src, tgt, train=False):
        """Teacher-forced negative log-likelihood per target position, and the target mask.

        src (Ts, B), tgt (Tt, B) int32 -> nll (Tt-1, B), mask (Tt-1, B); 0 on padding.
        """
        memory = self.encode(src, train)
        tgt_in, tgt_out = tgt[:-1], tgt[1:]  # (T, B) each
        tgt_mask = pt.neq(tgt_out, PAD_ID).astype(layers.FLOATX)  # (T, B)
        emb = self.modules["tgt_embed"](tgt_in)  # (T, B, E)
        h, ctx, _ = self.decoder_states(emb, tgt_mask, memory)  # (T, B, H)
        logits = self.logits(h, emb, ctx)  # (T, B, V)
        flat = logits.reshape((-1, logits.shape[-1]))  # (T*B, V)
        # One fused C pass per row, forward and backward (kernels.py, README Performance).
        nll = kernels.softmax_cross_entropy(flat, tgt_out.flatten())  # (T*B,)
        return nll.reshape(tgt_out.shape) * tgt_mask, tgt_mask  # (T, B)

    def loss(self, src, tgt, train=False):
        """Mean cross-entropy per real target token (a scalar), and the token count."""
        nll, mask = self.token_nll(src, tgt, train)
        n_tokens = pt.sum(mask, dtype=layers.FLOATX)
        return pt.sum(nll, dtype=layers.FLOATX) / pt.maximum(n_tokens, 1.0), n_tokens

    # ---- compiled functions, built once on first use ------------------------------------

    def _compiled(self, key, build):
        if key not in self._functions:
            self._functions[key] = build()
        return self._functions[key]

    def trainable_params(self):
        """The params training updates: every module's that is not frozen."""
        return [p for module in self.modules.values() if not module.frozen for p in module.params]

    def _updates(self, cost, grads, lr, optimizer, grad_clip):
        """The union of every module's `getUpdates`, given the trainable params' `grads`
        after global-norm clipping and the configured optimizer. All updates are skipped
        (every variable kept) when the gradient norm is not finite. Registers the
        optimizer's state variables for checkpoints."""
        clipped, norm = optim.clip_by_global_norm(grads, grad_clip)
        grad_of = dict(zip(self.trainable_params(), clipped))
        updates = []
        for module in self.modules.values():
            module_grads = [grad_of.get(p) for p in module.params]
            updates += module.getUpdates(cost, lr, module_grads, optim.OPTIMIZERS[optimizer])
        finite = pt.isfinite(norm)
        updates = [(var, pt.switch(finite, new, var)) for var, new in updates]
        param_ids = {id(p) for p in self.params}
        self.opt_state = [var for var, _ in updates if id(var) not in param_ids]
        self._restore_opt_state()
        return updates, norm

    def _dropout_update(self):
        """The RNG update if the graph just built drew dropout masks, else nothing."""
        return [(self.dropout_rng, self._rng_next)] if self._rng_next is not self.dropout_rng else []

    def compile_train(self, optimizer="adam", grad_clip=1.0):
        """The training step `f(src, tgt, lr) -> (loss, n_tokens, grad_norm)`.

        Updates are skipped (params unchanged) when the gradient norm is not finite, so a
        bad batch never corrupts the weights; the caller sees the non-finite norm.
        """
        def build():
            src, tgt = pt.imatrix("src"), pt.imatrix("tgt")
            lr = pt.scalar("lr", dtype=layers.FLOATX)
            self._rng_next = self.dropout_rng
            loss, n_tokens = self.loss(src, tgt, train=True)
            grads = pytensor.grad(loss, self.trainable_params())
            updates, norm = self._updates(loss, grads, lr, optimizer, grad_clip)
            return pytensor.function([src, tgt, lr], [loss, n_tokens, norm],
                                     updates=updates + self._dropout_update(), mode=self.mode)

        return self._compiled(("train", optimizer, grad_clip), build)

    def compile_grad(self):
        """Data-parallel half 1: `f(src, tgt) -> [summed nll, n_tokens, *gradients of the
        summed nll]`, one gradient per trainable param, no parameter updates."""
        def build():
            src, tgt = pt.imatrix("src"), pt.imatrix("tgt")
            self._rng_next = self.dropout_rng
            nll, mask = self.token_nll(src, tgt, train=True)
            total = pt.sum(nll, dtype=layers.FLOATX)
            outputs = [total, pt.sum(mask, dtype=layers.FLOATX), *pytensor.grad(total, self.trainable_params())]
            return pytensor.function([src, tgt], outputs, updates=self._dropout_update(), mode=self.mode)

        return self._compiled("grad", build)

    def compile_apply(self, optimizer="adam", grad_clip=1.0):
        """Data-parallel half 2: `f(lr, scale, *summed gradients) -> grad_norm` applies the
        optimizer to scale * gradients (scale = 1 / global token count), as compile_train."""
        def build():
            lr = pt.scalar("lr", dtype=layers.FLOATX)
            scale = pt.scalar("scale", dtype=layers.FLOATX)
            grads = [p.type(f"grad.{p.name}") for p in self.trainable_params()]
            updates, norm = self._updates(None, [g * scale for g in grads], lr, optimizer, grad_clip)
            return pytensor.function([lr, scale, *grads], norm, updates=updates, mode=self.mode)

        return self._compiled(("apply", optimizer, grad_clip), build)

    def compile_eval(self):
        """`f(src, tgt) -> (summed nll, n_tokens)` for validation, with no updates."""
        def build():
            src, tgt = pt.imatrix("src"), pt.imatrix("tgt")
            nll, mask = self.token_nll(src, tgt)
            outs = [pt.sum(nll, dtype=layers.FLOATX), pt.sum(mask, dtype=layers.FLOATX)]
            return pytensor.function([src, tgt], outs, mode=self.mode)

        return self._compiled("eval", build)

    def compile_attention(self):
        """`f(src, tgt) -> weights (Tt-1, Ts, B)`: the teacher-forced attention weights of
        each target position over the source (attention models only)."""
        if not self.attentive:
            raise ValueError("this model has no attention (attention = none)")

        def build():
            src, tgt = pt.imatrix("src"), pt.imatrix("tgt")
            memory = self.encode(src)
            tgt_mask = pt.neq(tgt[1:], PAD_ID).astype(layers.FLOATX)
            _, _, weights = self.decoder_states(self.modules["tgt_embed"](tgt[:-1]), tgt_mask, memory)
            return pytensor.function([src, tgt], weights, mode=self.mode)

        return self._compiled("attention", build)

    def decode(self, src, max_len=50, temperature=0.0, rng=None):
        """Greedy (temperature 0) or sampled decoding in one scan: ids (B, T) with PAD after EOS
        and each output's log-probability (B,). See decode.scan_decode."""
        return decode.scan_decode(self, src, max_len, temperature, rng)

    def compile_step(self):
        """(f_init, f_next) for searches run step by step from Python; see decode.compile_step."""
        return decode.compile_step(self)

    # ---- checkpoints ----------------------------------------------------------------------

    def save(self, path, state=None):
        """Write params, optimizer state, config, vocabularies and a JSON-able `state` dict
        (step counters, RNG state, ...) to an .npz, atomically: a crash leaves either the old
        file or the new one, never a torn one."""
        arrays = {f"param/{p.name}": p.get_value() for p in self.params}
        arrays.update({f"opt/{v.name}": v.get_value() for v in self.opt_state})
        for key, vocab in (("src_vocab", self.src_vocab), ("tgt_vocab", self.tgt_vocab)):
            if vocab is not None:
                arrays[key] = np.array(vocab.itos, dtype=str)
                if vocab.spm is not None:  # the SentencePiece model travels with the checkpoint
                    arrays[f"{key}_spm"] = np.frombuffer(vocab.spm, dtype=np.uint8)
        meta = {
            "format_version": FORMAT_VERSION,
            "model_config": dataclasses.asdict(self.config),
            "modules": {name: module_kind(mod) for name, mod in self.modules.items()},
            "state": state or {},
            "dropout_rng": self.dropout_rng.get_value(borrow=True).bit_generator.state,
        }
        arrays["meta"] = np.array(json.dumps(meta))
        save_arrays(path, arrays)  # refuses NaN/inf weights: a diverged model never replaces a good file

    @classmethod
    def load(cls, path, mode=backend.DEFAULT_MODE):
        """Rebuild a Model from a checkpoint written by `save`. Never unpickles.

        Returns the model; the saved `state` dict is `model.checkpoint_state`. Optimizer
        state is restored when `compile_train` builds the optimizer.
        """
        arrays = read_arrays(path)
        if "meta" not in arrays:
            raise CheckpointError(f"{path}: not a checkpoint of this project (no 'meta' entry)")
        try:
            meta = json.loads(str(arrays["meta"]))
            config = ModelConfig(**meta["model_config"])
            if not isinstance(meta.get("state", {}), dict):
                raise ValueError("its state is not a JSON object")
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            raise CheckpointError(f"{path}: unreadable model config: {err}") from None
        kinds = {int: int, float: (int, float), str: str, bool: bool}
        for field in dataclasses.fields(config):
            value, expected = getattr(config, field.name), kinds.get(field.type)
            if expected and (not isinstance(value, expected) or (expected is int and isinstance(value, bool))):
                raise CheckpointError(f"{path}: model config {field.name}={value!r} is not a {field.type}")
        try:
            vocabs = [Vocab(arrays[k].tolist(), spm=arrays[f"{k}_spm"].tobytes() if f"{k}_spm" in arrays else None)
                      if k in arrays else None for k in ("src_vocab", "tgt_vocab")]
        except (ValueError, RuntimeError, TypeError) as err:
            raise CheckpointError(f"{path}: unreadable vocabulary: {err}") from None
        if meta.get("format_version", 1) > FORMAT_VERSION:
            raise CheckpointError(f"{path}: format version {meta['format_version']} is newer than this code's "
                                  f"({FORMAT_VERSION}); update the code")
        for vocab, size, side in zip(vocabs, (config.src_vocab_size, config.tgt_vocab_size), ("src", "tgt")):
            if vocab is not None and len(vocab) != size:
                raise CheckpointError(f"{path}: the {side} vocabulary has {len(vocab)} entries, the model config {size}")
        try:
            model = cls(config, *vocabs, mode=mode)
        except ValueError as err:  # e.g. a cell of the user's that cannot be imported here
            raise CheckpointError(f"{path}: {err}") from None
        saved_modules = meta.get("modules", {})
        for name, module in model.modules.items():
            saved = _OLD_KINDS.get(saved_modules.get(name), saved_modules.get(name))
            if saved is not None and saved != module_kind(module):
                raise CheckpointError(
                    f"{path}: module {name!r} is a {saved} in the checkpoint but initModules() "
                    f"builds a {module_kind(module)}"
                )
        restore(model.params, arrays, path, prefix="param/")
        model._pending_opt_state = {k[4:]: v for k, v in arrays.items() if k.startswith("opt/")}
        model._checkpoint_file = path
        model.checkpoint_state = meta.get("state", {})
        if "dropout_rng" in meta:
            generator = np.random.default_rng()
            try:
                generator.bit_generator.state = meta["dropout_rng"]
            except (TypeError, ValueError, KeyError) as err:
                raise CheckpointError(f"{path}: unreadable dropout RNG state ({err})") from None
            model.dropout_rng.set_value(generator)
        return model

    def _restore_opt_state(self):
        """Set the optimizer's state from the loaded checkpoint, checked as the params are. A
        trained checkpoint without it is refused rather than resumed with a reset optimizer."""
        pending, path = self._pending_opt_state, getattr(self, "_checkpoint_file", "checkpoint")
        if not self.opt_state or (not pending and not self.checkpoint_state.get("step")):
            return  # plain SGD has no state; a never-trained model starts its optimizer afresh
        mapped = {}
        for var in self.opt_state:
            # Before getUpdates trained each module, one Adam step count served them all.
            old = "adam.t" if var.name.startswith("adam.t.") and var.name not in pending else var.name
            if old in pending:
                mapped["opt/" + var.name] = pending[old]
        restore(self.opt_state, mapped, path, prefix="opt/")
        self._pending_opt_state = {}


def module_kind(module):
    """A module's class as checkpoints record it: `LSTM`, `AttentionDecoder(LSTM)`."""
    inner = getattr(module, "cell", None)
    return type(module).__name__ + (f"({type(inner).__name__})" if inner is not None else "")


_OLD_KINDS = {"AttentionGRU": "AttentionDecoder(GRU)"}  # names in checkpoints of earlier versions
