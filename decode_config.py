"""DecodeConfig: the settings sample.py and evaluate.py share (which checkpoint, how to decode
it, in which compile mode) and their checks, written once; each script's own settings extend it."""
import math
from dataclasses import dataclass

import modes
from configurator import available_memory, require, setting
from decode import MAX_BEAM, MAX_LEN


@dataclass
class DecodeConfig:
    dataset: str = setting("kjv", "the run of this dataset (out/<dataset>), unless out_dir is given")
    out_dir: str = setting("", "run folder whose checkpoint to load; empty = out/<dataset>")
    ckpt: str = setting("best", "best, latest, step<N>, or a path to an .npz")
    beam_size: int = setting(1, f"1 = greedy decoding (or sampling, in sample.py); > 1 = beam search (at most {MAX_BEAM}, "
                                "and what the free memory holds)")
    length_norm: float = setting(1.0, "beam ranks by log p / length**length_norm")
    no_repeat_ngram_size: int = setting(0, "n > 0: no output repeats an n-gram (a guard against loops)")
    unk_penalty: float = setting(math.inf, "subtracted from <unk>'s log-probability; inf = never emit <unk>")
    max_len: int = setting(60, f"longest output, in tokens (at most {MAX_LEN})")
    mode: str = setting(modes.DEFAULT_MODE, f"compile mode: {', '.join(modes.MODES)}")

    def check(self):
        """ConfigError in one line for an impossible setting; the mode first, before any
        checkpoint is read (mode=JAX without JAX is one line)."""
        require(self.mode in modes.MODES, f"mode={self.mode!r}: use one of {', '.join(modes.MODES)}")
        modes.compile_mode(self.mode)
        require(0 < self.max_len <= MAX_LEN, f"max_len={self.max_len}: must be between 1 and {MAX_LEN}")
        require(1 <= self.beam_size <= MAX_BEAM, f"beam_size={self.beam_size}: must be between 1 and {MAX_BEAM}")
        require(math.isfinite(self.length_norm), f"length_norm={self.length_norm}: must be a finite number")
        require(self.no_repeat_ngram_size >= 0,
                f"no_repeat_ngram_size={self.no_repeat_ngram_size}: must not be negative")
        require(self.unk_penalty >= 0, f"unk_penalty={self.unk_penalty}: must not be negative (inf bans <unk>)")

    def search(self):
        """decode.generate's settings of the search, as a dict."""
        return dict(beam_size=self.beam_size, length_norm=self.length_norm, unk_penalty=self.unk_penalty,
                    no_repeat_ngram_size=self.no_repeat_ngram_size)

    def check_memory(self, model, n_sentences):
        """ConfigError unless a beam of beam_size over n_sentences sentences at a time fits in the
        memory free: every step holds (sentences x beam, target vocabulary) float32 scores, a few
        times over (log-probabilities, candidate scores, their ranking)."""
        need, free = 16 * n_sentences * self.beam_size * len(model.tgt_vocab), available_memory()
        require(self.beam_size == 1 or free is None or need < free,
                f"beam_size={self.beam_size}: a beam over {n_sentences:,} sentence(s) of a {len(model.tgt_vocab):,}-word "
                f"vocabulary needs about {need / 2**30:,.1f} GiB a step; {free / 2**30:,.1f} GiB is free")

