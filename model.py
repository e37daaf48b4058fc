"""The Cho et al. 2014 RNN encoder-decoder: modules from `initModules()`, wired with scan.

    c      = encoder state after the last real source token     (B, H)
    h'_0   = tanh(c V + b)                                      the "init" module
    h'_t   = decoder([e(y_{t-1}); c], h'_{t-1})                 c is fed to every step
    o_t    = tanh([h'_t; e(y_{t-1}); c] W_o + b_o)              ... and to the output
    p(y_t) = softmax(o_t W_out + b_out)

With `attention` set (Bahdanau et al. 2015), c in the decoder and the output is replaced by a
context ctx_t that the decoder computes at each step from all encoder annotations; the
attention may keep a state (coverage) and the decoder may feed its attentional vector back
(input_feeding). Both decoders are modules of decoder.py with one interface, so the Model
asks its "decoder" module, never the config. The encoder can be bidirectional (annotations
[forward; backward], c = [last fwd; first bwd]) and stacked.

Regularisers, each a setting that is 0 (off) by default and acts in training only: dropout
on the word vectors, between stacked encoder layers and on the deep output layer; locked
dropout (one mask per sequence) on every recurrent layer's input and output; weight-drop
(DropConnect on every recurrent matrix U, AWD-LSTM); zoneout on every recurrent state
(Krueger et al. 2017); word dropout (input words replaced by <unk>); the softmax weights
tied to the target word vectors, and one table for source and target; label smoothing in
the loss (perplexity stays the plain cross-entropy's).

Batches are (T, B) int32 id matrices, time first, padded with PAD_ID; masks are derived
from the padding. A target batch holds BOS y_1 .. y_n EOS, so the decoder reads tgt[:-1]
and predicts tgt[1:].
"""
import numpy as np

from flags import FLOATX
import cells
import checkpoint
import compiled
import decode
import layers
import modes
import optim
import pytensor
import pytensor.tensor as pt
import softmax_kernel
from attention import attention_class
from configurator import ConfigError
from decoder import AttentionDecoder, Decoder, check_modules
from model_config import ModelConfig
from regularisers import Regularisers
from vocab import PAD_ID

class Model:
    def __init__(self, config, src_vocab=None, tgt_vocab=None, mode=modes.DEFAULT_MODE):
        self.config = config
        self.mode_name, self.mode = mode, modes.compile_mode(mode)
        self.src_vocab, self.tgt_vocab = src_vocab, tgt_vocab
        self.rng = np.random.default_rng(config.init_seed)
        self.modules = self.initModules()
        if isinstance(self.modules["decoder"], cells.Recurrent):  # a bare cell: Cho's decoder around it
            self.modules["decoder"] = Decoder(self.modules["decoder"])
        try:  # a cell, attention or decoder of the user's own, before anything is compiled
            check_modules(self.modules)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        self.params = [p for module in self.modules.values() for p in module.params]
        names = [p.name for p in self.params]
        if len(set(names)) != len(names):
            raise ValueError(f"parameter names must be unique, got {names}")
        if config.tie_embeddings:  # a user's initModules() may have changed the readout's width
            out, embed = self.modules["readout"].outputSize, self.modules["tgt_embed"].W.get_value(borrow=True).shape
            if out != embed[1]:
                raise ConfigError(f"tie_embeddings: the readout is {out} wide but the target word vectors are "
                                  f"{embed[1]} (table {embed[0]} x {embed[1]}); they must be the same width")
        self.opt_state = []  # shared variables written by the optimizer, see compile_train
        self._pending_opt_state = {}  # a loaded checkpoint's, set when the optimizer is built
        self.checkpoint_state = {}  # the saved `state` dict of a loaded checkpoint
        self.checkpoint_file = None
        self.functions = {}  # compiled functions by key, built on first use (compiled.cached)
        self.dropout = layers.Dropout(config.init_seed + 1)  # training advances it, checkpoints save it
        self.reg = Regularisers(config, self.dropout)

    def initModules(self):
        """The model's modules, one line each: the place to edit. Every recurrent slot is a
        `Cell`, the class registered as `cell` (--cell=lstm); write `Cell = MyCell` below to
        try your own everywhere, or replace one line to change one slot, e.g.
        `modules["decoder"] = cells.LSTM([E, C], H, name="decoder", rng=rng)` (a bare cell in
        the decoder slot is Cho's decoder around it) or any module with decoder.py's
        interface. A module with `.frozen = True` is not trained; `.lr_scale = 0.1` slows its
        learning rate."""
        cfg, rng = self.config, self.rng
        E, H = cfg.embed_size, cfg.hidden_size
        C = H * (2 if cfg.bidirectional else 1)  # annotation width: [forward; backward]
        Cell = cells.cell_class(cfg.cell)
        options = {"reset_after": True} if cfg.reset_after else {}  # a GRU setting (train.check)

        def cell(input_size, name):  # the slot's own cell setting, else `cell`
            slot = cfg.decoder_cell if name == "decoder" else cfg.encoder_cell
            cls = cells.cell_class(slot) if slot else Cell
            return cls(input_size, H, name=name, rng=rng, **(options if issubclass(cls, cells.GRU) else {}))

        src_embed = None if cfg.tie_src_tgt else layers.Embedding(cfg.src_vocab_size, E, "src_embed", rng,
                                                                    cfg.embed_init_std)
        tgt_embed = layers.Embedding(cfg.tgt_vocab_size, E, "tgt_embed", rng, cfg.embed_init_std)
        modules = {
            "src_embed": src_embed or layers.Embedding.tied(tgt_embed, "src_embed"),
            "tgt_embed": tgt_embed,
            "encoder": cell(E, "encoder"),
        }
        for layer in range(cfg.encoder_layers):
            name, width = ("encoder", E) if layer == 0 else (f"encoder{layer}", C)
            if layer > 0:  # stacked layers read the annotations of the layer below
                modules[name] = cell(width, name)
            if cfg.bidirectional:
                modules[f"{name}_bwd"] = cell(width, f"{name}_bwd")
        modules["init"] = layers.FF(C, H, "tanh", name="init", rng=rng)
        if cfg.attention == "none":
            modules["decoder"] = Decoder(cell([E, C], "decoder"))
        else:
            attention = attention_class(cfg.attention)(H, C, cfg.attention_size or H, "decoder.attention", rng)
            modules["decoder"] = AttentionDecoder(cell(E, "decoder"), C, attention, rng, cfg.input_feeding)
        modules["readout"] = layers.FF([H, E, C], E, "tanh", name="readout", rng=rng)
        modules["ffout"] = layers.TiedOutput(tgt_embed, name="ffout") if cfg.tie_embeddings else \
            layers.FF(E, cfg.tgt_vocab_size, "linear", name="ffout", rng=rng)
        return modules

    # ---- the symbolic graph -------------------------------------------------------------

    def encode(self, src, train=False):
        """src (Ts, B) int32 -> the memory the decoder reads, a dict of
        c (B, C): the encoder's summary (states after the last real token, both directions);
        annotations (Ts, B, C): the top layer's states at every source position;
        src_mask (Ts, B); and, for attention, keys (Ts, B, A)."""
        m, cfg = self.modules, self.config
        src_mask = pt.neq(src, PAD_ID).astype(FLOATX)  # (Ts, B)
        x = self.reg.drop(m["src_embed"](self.reg.word_dropout(src, train)), cfg.embed_dropout, train)  # (Ts, B, E)
        for layer in range(cfg.encoder_layers):
            name = "encoder" if layer == 0 else f"encoder{layer}"
            x = self.reg.drop(x, cfg.dropout if layer > 0 else 0.0, train)
            x = self.reg.drop(x, cfg.rnn_dropout, train, locked=True)
            cell = m[name]
            fwd = cell.scan(cell.project(x), src_mask, mode=self.mode_name, weights=self.reg.dropped_U(cell, train),
                            zoneout=self.reg.zoneout(src_mask, cell, train))[0]
            # Masking carried each state past its padding, so fwd[-1] is after the last token.
            annotations, c = fwd, fwd[-1]  # (Ts, B, H), (B, H)
            if cfg.bidirectional:
                cell = m[f"{name}_bwd"]
                # Scanning backwards, padding comes first and leaves the zero state as it is.
                bwd = cell.scan(cell.project(x), src_mask, go_backwards=True, mode=self.mode_name,
                                weights=self.reg.dropped_U(cell, train), zoneout=self.reg.zoneout(src_mask, cell, train))[0]
                bwd = bwd[::-1]  # (Ts, B, H), back in source order
                annotations = pt.concatenate([fwd, bwd], axis=2)  # (Ts, B, 2H)
                c = pt.concatenate([c, bwd[0]], axis=1)  # (B, 2H)
            x = self.reg.drop(annotations, cfg.rnn_dropout, train, locked=True)
        # The decoder adds what it computes once per batch (attention keys (Ts, B, A)).
        return m["decoder"].prepare({"c": c, "annotations": x, "src_mask": src_mask})

    @property
    def has_attention(self):
        return getattr(self.modules["decoder"], "attention", None) is not None

    def memory_names(self):
        """The memory entries the decoder reads, in the order compiled functions pass them."""
        return self.modules["decoder"].memory_names

    def decoder_init(self, memory):
        """The decoder's full initial state (a list, one entry per state tensor) from c."""
        return self.modules["decoder"].initial_state(self.modules["init"](memory["c"]), self._read(memory))

    def _read(self, memory):
        return [memory[name] for name in self.modules["decoder"].memory_names]

    def decoder_step(self, y_prev, states, memory):
        """One decoding step: y_prev (B,) ids and the state list -> (new state list,
        logits (B, V), attention weights (Ts, B) or None)."""
        dec = self.modules["decoder"]
        emb = self.modules["tgt_embed"](y_prev)  # (B, E)
        new, ctx, weights = dec.step(emb, list(states), self._read(memory))
        if self.config.zoneout > 0:  # its expectation: each unit moves 1 - zoneout of the way
            n_cell = getattr(getattr(dec, "cell", None), "n_states", len(new))
            new = cells.zone_out(new[:n_cell], states[:n_cell], np.float32(1.0 - self.config.zoneout)) + new[n_cell:]
        return new, self.logits(new[0], emb, ctx), weights

    def decoder_states(self, emb, tgt_mask, memory, train=False):
        """Teacher-forced decoder over embedded inputs emb (T, B, E) -> h (T, B, H), the
        context the output reads ((T, B, C), or c (B, C) fed to every step), and the
        attention weights (T, Ts, B) or None."""
        dec = self.modules["decoder"]
        cell = getattr(dec, "cell", dec)
        states, ctx, weights = dec.scan(emb, tgt_mask, self.decoder_init(memory), self._read(memory), self.mode_name,
                                        self.reg.dropped_U(cell, train), self.reg.zoneout(tgt_mask, cell, train))
        return states[0], ctx, weights

    def logits(self, h, y_prev_emb, c):
        """Unnormalised next-token scores from decoder states: (..., H) -> (..., V)."""
        return self.modules["ffout"](self.modules["readout"](h, y_prev_emb, c))

    def token_nll(self, src, tgt, train=False):
        """Teacher-forced negative log-likelihood per target position, the target mask, and
        the training objective per position: the nll, or with label_smoothing in training
        (1 - e) nll + e * (the cross-entropy against a uniform distribution).

        src (Ts, B), tgt (Tt, B) int32 -> nll, mask, objective, each (Tt-1, B); 0 on padding.
        """
        cfg = self.config
        memory = self.encode(src, train)
        tgt_in, tgt_out = tgt[:-1], tgt[1:]  # (T, B) each
        tgt_mask = pt.neq(tgt_out, PAD_ID).astype(FLOATX)  # (T, B)
        emb = self.reg.drop(self.modules["tgt_embed"](self.reg.word_dropout(tgt_in, train)), cfg.embed_dropout, train)
        h, ctx, _ = self.decoder_states(self.reg.drop(emb, cfg.rnn_dropout, train, locked=True), tgt_mask, memory, train)
        readout = self.modules["readout"](self.reg.drop(h, cfg.rnn_dropout, train, locked=True), emb, ctx)  # (T, B, E)
        logits = self.modules["ffout"](self.reg.drop(readout, cfg.readout_dropout, train))  # (T, B, V)
        flat = logits.reshape((-1, logits.shape[-1]))  # (T*B, V)
        # One fused C pass per row, forward and backward (softmax_kernel.py, docs/performance.md).
        nll, objective = softmax_kernel.smoothed_cross_entropy(flat, tgt_out.flatten(), cfg.label_smoothing if train else 0)
        return [v.reshape(tgt_out.shape) * tgt_mask for v in (nll, tgt_mask, objective)]  # (T, B) each

    def loss(self, src, tgt, train=False):
        """The mean training objective per real target token (the cross-entropy, unless
        label smoothing applies) and the token count."""
        _, mask, objective = self.token_nll(src, tgt, train)
        n_tokens = pt.sum(mask, dtype=FLOATX)
        return pt.sum(objective, dtype=FLOATX) / pt.maximum(n_tokens, 1.0), n_tokens

    # ---- compiled functions, built once on first use ------------------------------------

    def trainable_params(self):
        """The params training updates: every module's that is not frozen."""
        return [p for module in self.modules.values() if not module.frozen for p in module.params]

    def training_updates(self, cost, grads, lr, optimizer, grad_clip):
        """Every module's `getUpdates` with the trainable params' clipped `grads` and the
        configured optimizer, all skipped when the gradient norm is not finite
        (optim.guarded_updates). Registers the optimizer's state variables for checkpoints."""
        def module_updates(clipped):
            grad_of = dict(zip(self.trainable_params(), clipped))
            return [u for module in self.modules.values() for u in module.getUpdates(
                cost, lr, [grad_of.get(p) for p in module.params], optim.OPTIMIZERS[optimizer])]

        updates, norm, self.opt_state = optim.guarded_updates(self.params, grads, grad_clip, module_updates)
        if self._pending_opt_state or self.checkpoint_state.get("step"):  # else a fresh optimizer
            checkpoint.restore_optimizer(self.opt_state, self._pending_opt_state, self.checkpoint_file)
            self._pending_opt_state = {}
        return updates, norm

    def compile_train(self, optimizer="adam", grad_clip=1.0):
        """The training step `f(src, tgt, lr) -> (loss, n_tokens, grad_norm)`, the loss being
        the mean cross-entropy per token (what perplexity measures; with label smoothing the
        gradient is the smoothed objective's).

        Updates are skipped (params unchanged) when the gradient norm is not finite, so a
        bad batch never corrupts the weights; the caller sees the non-finite norm.
        """
        def build():
            src, tgt = pt.imatrix("src"), pt.imatrix("tgt")
            lr = pt.scalar("lr", dtype=FLOATX)
            self.dropout.begin()
            nll, mask, objective = self.token_nll(src, tgt, train=True)
            n_tokens = pt.sum(mask, dtype=FLOATX)
            mean = lambda v: pt.sum(v, dtype=FLOATX) / pt.maximum(n_tokens, 1.0)  # noqa: E731
            grads = pytensor.grad(mean(objective), self.trainable_params())
            updates, norm = self.training_updates(mean(objective), grads, lr, optimizer, grad_clip)
            return compiled.function([src, tgt, lr], [mean(nll), n_tokens, norm], self.mode,
                                    updates + self.dropout.updates(), pad=True)

        return compiled.cached(self.functions, ("train", optimizer, grad_clip), build)

    def compile_eval(self):
        """`f(src, tgt) -> (summed nll, n_tokens)` for validation, with no updates."""
        def build():
            src, tgt = pt.imatrix("src"), pt.imatrix("tgt")
            nll, mask, _ = self.token_nll(src, tgt)
            outs = [pt.sum(nll, dtype=FLOATX), pt.sum(mask, dtype=FLOATX)]
            return compiled.function([src, tgt], outs, self.mode, pad=True)

        return compiled.cached(self.functions, "eval", build)

    def compile_sentence_nll(self):
        """`f(src, tgt) -> (nll (B,), n_tokens (B,))`: each sentence's summed negative
        log-likelihood and its count of target tokens (EOS included). Under JAX the batch may
        come back padded: read the first B."""
        def build():
            src, tgt = pt.imatrix("src"), pt.imatrix("tgt")
            nll, mask, _ = self.token_nll(src, tgt)
            outs = [pt.sum(nll, axis=0, dtype=FLOATX), pt.sum(mask, axis=0, dtype=FLOATX)]
            return compiled.function([src, tgt], outs, self.mode, pad=True)

        return compiled.cached(self.functions, "sentence_nll", build)

    def compile_attention(self):
        """`f(src, tgt) -> weights (Tt-1, Ts, B)`: the teacher-forced attention weights of
        each target position over the source (attention models only)."""
        if not self.has_attention:
            raise ValueError("this model's decoder has no attention (attention = none)")

        def build():
            src, tgt = pt.imatrix("src"), pt.imatrix("tgt")
            memory = self.encode(src)
            tgt_mask = pt.neq(tgt[1:], PAD_ID).astype(FLOATX)
            _, _, weights = self.decoder_states(self.modules["tgt_embed"](tgt[:-1]), tgt_mask, memory)
            return compiled.function([src, tgt], weights, self.mode, batch_axes=([1, 1], [2]))

        return compiled.cached(self.functions, "attention", build)

    def decode(self, src, max_len=50, temperature=0.0, rng=None):
        """Greedy (temperature 0) or sampled decoding in one scan: ids (B, T) with PAD after EOS
        and each output's log-probability (B,). See decode.scan_decode."""
        return decode.scan_decode(self, src, max_len, temperature, rng)

    def compile_step(self):
        """(f_init, f_next) for searches run step by step from Python; see decode.compile_step."""
        return decode.compile_step(self)

    # ---- checkpoints (checkpoint.py) ------------------------------------------------------

    def save(self, path, state=None):
        """Write params, optimizer state, config, vocabularies and a JSON-able `state` dict
        (step counters, RNG state, ...) to an .npz, atomically; never with NaN/inf weights."""
        checkpoint.save_model(self, path, state)

    @classmethod
    def load(cls, path, mode=modes.DEFAULT_MODE):
        """The Model saved at `path`, never unpickling; its saved `state` dict is
        `model.checkpoint_state`. Optimizer state is restored when `compile_train` builds it."""
        return checkpoint.load_model(cls, ModelConfig, path, mode)
