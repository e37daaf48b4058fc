"""ModelConfig: the architecture settings, saved in every checkpoint and restored from it,
with their checks and the estimate of the memory they need."""
import dataclasses
import math
from dataclasses import dataclass

import cells
from attention import ATTENTIONS, attention_class, check_attention
from configurator import ConfigError, available_memory, require, setting

# The settings that change training only, not the parameters: a run fine-tuned from another's
# checkpoint (train.py --init_from=<checkpoint>) may set them anew.
REGULARISERS = ("dropout", "embed_dropout", "rnn_dropout", "weight_drop", "zoneout", "word_dropout", "readout_dropout",
                "label_smoothing")


@dataclass
class ModelConfig:
    """Architecture settings; saved in every checkpoint and restored from it."""

    embed_size: int = setting(128, "word vector width; also the deep output layer's width")
    hidden_size: int = setting(256, "encoder and decoder state width")
    init_seed: int = setting(1337, "seed of the parameter initialisation")
    # Measured: on KJV, 0.1 left the model at the unigram loss for 800 steps and 1.0 learns;
    # on the reverse task 0.1 reaches 99% exact match and 1.0 stalls near 92%.
    embed_init_std: float = setting(1.0, "std of the initial word vectors (see README)")
    cell: str = setting("gru", f"recurrent cell of every encoder and decoder slot: {', '.join(cells.CELLS)}, "
                               "a registered name, or module:Class")
    encoder_cell: str = setting("", "the encoder's cell (every layer and direction), if not `cell`")
    decoder_cell: str = setting("", "the decoder's cell, if not `cell`")
    reset_after: bool = setting(False, "GRU only: reset gate after the recurrent matmul (nn.GRU's form), not before (Cho's)")
    encoder_layers: int = setting(1, "stacked encoder layers")
    bidirectional: bool = setting(False, "add a backward scan to every encoder layer")
    attention: str = setting("none", f"none (Cho 2014's fixed c), {', '.join(ATTENTIONS)}, or module:Class")
    input_feeding: bool = setting(False, "attention only: feed each step's attentional vector to the next (Luong 2015)")
    attention_size: int = setting(0, "additive attention's hidden width; 0 = hidden_size")
    dropout: float = setting(0.0, "dropout between stacked encoder layers, training only")
    embed_dropout: float = setting(0.0, "dropout on the source and target word vectors, training only")
    rnn_dropout: float = setting(0.0, "locked dropout (one mask per sequence) on every recurrent layer's input and output")
    weight_drop: float = setting(0.0, "DropConnect on every recurrent matrix U, one mask per batch (AWD-LSTM)")
    zoneout: float = setting(0.0, "zoneout: each recurrent state unit keeps its previous value with this probability")
    word_dropout: float = setting(0.0, "replace source and target input words by <unk> with this probability")
    readout_dropout: float = setting(0.0, "dropout on the deep output layer, before the softmax")
    tie_embeddings: bool = setting(False, "the softmax weights are the target word vectors (Press & Wolf 2017)")
    tie_src_tgt: bool = setting(False, "one word-vector table for source and target (same vocabulary only)")
    label_smoothing: float = setting(0.0, "spread this much of each target's probability over the vocabulary")
    src_vocab_size: int = setting(0, "from the prepared data's vocabulary", derived=True)
    tgt_vocab_size: int = setting(0, "from the prepared data's vocabulary", derived=True)

    def approx_param_count(self):
        """About how many parameters initModules() builds for these settings at most (gated cells counted
        as LSTMs, the largest stock cell, with attention and input feeding), known before any
        memory is allocated."""
        E, H, dirs = self.embed_size, self.hidden_size, 2 if self.bidirectional else 1
        C, A = H * dirs, self.attention_size or H
        cell = lambda n_in: 4 * H * (n_in + H + 1)  # noqa: E731
        encoder = dirs * (cell(E) + (self.encoder_layers - 1) * cell(C))
        V = self.tgt_vocab_size
        decoder = cell(E + C) + (C + 1) * H + (H + E + C + 1) * E + (E + 1) * V  # cell, init, readout, ffout
        attention = A * (H + C + 3) + 4 * H * H + (H + C + 1) * H  # + coverage, input feeding's W_f and feed layer
        return (self.src_vocab_size + self.tgt_vocab_size) * E + encoder + decoder + attention

    def check(self):
        """ConfigError in one line unless every setting is possible; a user's cell or attention
        (module:Class) is built small and checked, before anything else is."""
        for field in dataclasses.fields(self):  # inf and NaN pass every range check below
            value = getattr(self, field.name)
            require(not isinstance(value, float) or math.isfinite(value), f"{field.name}={value}: must be a finite number")
        for name in ("embed_size", "hidden_size", "embed_init_std"):
            require(getattr(self, name) > 0, f"{name}={getattr(self, name)}: must be positive")
        require(self.encoder_layers > 0, f"encoder_layers={self.encoder_layers}: must be positive")
        if self.attention != "none":
            try:
                attention = attention_class(self.attention)
                if attention not in ATTENTIONS.values():  # a user's attention: checked before anything is built
                    check_attention(attention)
            except ValueError as err:
                raise ConfigError(f"attention={self.attention!r}: {err}; or none") from None
        require(not self.input_feeding or self.attention != "none", "input_feeding=true needs an attention (attention=none)")
        for name in ("cell", "encoder_cell", "decoder_cell"):
            value = getattr(self, name)
            try:
                cell = cells.cell_class(value) if value or name == "cell" else None
                if cell not in (None, cells.GRU, cells.LSTM):  # a user's cell: checked before anything is built
                    cells.check_cell(cell)
            except ValueError as err:
                raise ConfigError(f"{name}={value!r}: {err}") from None
        slots = {getattr(self, name) or self.cell for name in ("encoder_cell", "decoder_cell")}
        require(not self.reset_after or any(issubclass(cells.cell_class(c), cells.GRU) for c in slots),
                f"reset_after=true is a GRU setting; no slot has a GRU ({', '.join(sorted(slots))})")
        require(self.attention_size >= 0, f"attention_size={self.attention_size}: must not be negative")
        for name in REGULARISERS:
            require(0 <= getattr(self, name) < 1, f"{name}={getattr(self, name)}: must be in [0, 1)")
        require(self.init_seed >= 0, f"init_seed={self.init_seed}: must not be negative")

    def check_memory(self):
        """Refuse a model whose parameters, gradients and Adam moments alone exceed the memory
        this machine has free, before allocating any of it."""
        need = self.approx_param_count() * 4 * 5  # float32: params, gradients, 2 moments, a temporary
        free = available_memory()
        require(free is None or need < free, f"hidden_size={self.hidden_size}, embed_size={self.embed_size}: the model "
                f"needs about {need / 2**30:,.1f} GiB for its weights and optimizer; {free / 2**30:,.1f} GiB is free")
