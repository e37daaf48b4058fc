"""Sample next sentences from a checkpoint.

    python sample.py --start="In the beginning God created the heaven and the earth."
    python sample.py                                  # on a terminal: type a line, get outputs
    echo "the house is on fire" | python sample.py --num_samples=5 --top_p=0.9
    python sample.py --dataset=mybook --start="It was a dark and stormy night."
    python sample.py --dataset=kjv_es --beam_size=5 --num_samples=3 --start="And God said"
    python sample.py --dataset=kjv_es --start="..." --plot_attention=attention.png
    python sample.py --help

The checkpoint is <out_dir>/ckpt_best.npz, out_dir defaulting to out/<dataset> as in
train.py. Each input (--start, else each line typed at the prompt, or piped in) is tokenised
as in training, encoded, and decoded: num_samples samples at the temperature (restricted to
the top_k words and the top_p nucleus when set), or greedily at temperature 0. With
beam_size > 1, beam search gives the num_samples best outputs (at most beam_size), each with
its log-probability. --plot_attention saves a source x output heatmap of the attention
weights for the first input (attention models).
"""
import math
import os
import sys
from dataclasses import dataclass

import numpy as np

from checkpoint import CheckpointError, checkpoint_path
from configurator import ConfigError, configure, require, setting
from dataset import pad_batch
from decode import MIN_TEMPERATURE, beam_search, generate
from decode_config import DecodeConfig
from model import Model
from runs import run_dir
from vocab import UNK_ID

MAX_SAMPLES = 1000  # outputs per input decoded together: a bound on one batch's memory


@dataclass
class SampleConfig(DecodeConfig):
    start: str = setting("", "input sentence; empty = read lines (a prompt on a terminal)")
    num_samples: int = setting(3, f"outputs per input: samples, or the n best of a beam (at most {MAX_SAMPLES})")
    temperature: float = setting(0.8, f"0 (or below {MIN_TEMPERATURE:g}) = greedy; higher = more varied")
    top_k: int = setting(0, "sample only among the k most probable words; 0 = all")
    top_p: float = setting(1.0, "sample only from the nucleus: the fewest most probable words whose probability "
                                "reaches top_p; 1 = all")
    plot_attention: str = setting("", "save the first input's attention heatmap to this PNG")
    seed: int = setting(1337, "sampling seed")

    def check(self, explicit=()):
        super().check()
        require(0 < self.num_samples <= MAX_SAMPLES,
                f"num_samples={self.num_samples}: must be between 1 and {MAX_SAMPLES}")
        for name in ("temperature", "top_p"):
            require(math.isfinite(getattr(self, name)), f"{name}={getattr(self, name)}: must be a finite number")
        require(self.temperature >= 0, f"temperature={self.temperature}: must not be negative")
        require(self.top_k >= 0, f"top_k={self.top_k}: must not be negative (0 = all words)")
        require(0 < self.top_p <= 1, f"top_p={self.top_p}: must be in (0, 1]")
        require(self.seed >= 0, f"seed={self.seed}: must not be negative")
        sampling = [f"{name}={getattr(self, name)}" for name in ("temperature", "top_k", "top_p") if name in explicit]
        require(self.beam_size == 1 or not sampling, f"{', '.join(sampling)}: beam search (beam_size={self.beam_size}) "
                                                     "does not sample; drop them, or use beam_size=1")
        require(self.beam_size == 1 or self.num_samples <= self.beam_size or "num_samples" not in explicit,
                f"num_samples={self.num_samples}: a beam of {self.beam_size} gives at most {self.beam_size} outputs")
        if self.beam_size > 1:  # the default number of outputs, as many as the beam holds
            self.num_samples = min(self.num_samples, self.beam_size)
        if self.plot_attention:
            if not self.plot_attention.lower().endswith(".png"):
                self.plot_attention += ".png"  # the file matplotlib would write; said as it is
            folder = os.path.dirname(os.path.abspath(self.plot_attention))
            require(os.path.isdir(folder), f"plot_attention={self.plot_attention}: the folder {folder} does not exist")


def inputs(cfg):
    """The input lines: --start, else lines read one at a time (with a prompt on a terminal)."""
    if cfg.start:
        yield cfg.start
        return
    interactive = sys.stdin.isatty()
    if interactive:
        print("Type a sentence and press Enter; Ctrl-D quits.", file=sys.stderr)
    while True:
        try:
            line = input("> ") if interactive else sys.stdin.readline()
        except EOFError:
            return
        if not interactive and not line:
            return
        if line.strip():
            yield line.rstrip("\n")


def respond(model, cfg, line, rng, reverse):
    """Print the outputs for one input line, each with its log-probability; returns the
    first output's ids (for the attention plot), or None."""
    tokens = model.src_vocab.tokens(line)
    ids = model.src_vocab.encode(tokens)
    if not sys.stdin.isatty() or cfg.start:
        print(f"> {line}")
    if not tokens:
        print("  (no words in this input; skipped)")
        return None
    if not any(i != UNK_ID for i in ids):
        print("  (every word is outside the vocabulary; the model sees only <unk>)")
    ids = ids[::-1] if reverse else ids
    if cfg.beam_size > 1:
        outputs, scores = beam_search(model, pad_batch([ids]), cfg.beam_size, cfg.max_len, cfg.length_norm,
                                      cfg.no_repeat_ngram_size, cfg.unk_penalty, nbest=cfg.num_samples)
        outputs, scores = (outputs[0], scores[0]) if cfg.num_samples > 1 else (outputs, scores)
    else:
        n = 1 if cfg.temperature < MIN_TEMPERATURE else cfg.num_samples  # greedy outputs would repeat
        outputs, scores = generate(model, pad_batch([ids] * n), cfg.max_len, cfg.temperature, rng,
                                   no_repeat_ngram_size=cfg.no_repeat_ngram_size, top_k=cfg.top_k, top_p=cfg.top_p,
                                   unk_penalty=cfg.unk_penalty)
    for out, logp in zip(outputs, scores):
        text = model.tgt_vocab.text(out) or "(an empty output: EOS first)"
        # A beam ranks by log p / length**length_norm (EOS counted): shown beside log p.
        rank = f", ranked by {logp / (len(out) + 1) ** cfg.length_norm:.2f}" if cfg.beam_size > 1 else ""
        print(f"  {text}    [log p = {logp:.1f}{rank}]", flush=True)
    return ids, outputs[0]


def main(argv):
    cfg = SampleConfig()
    cfg.check(configure([cfg], argv, __doc__.strip()))
    path = checkpoint_path(run_dir(cfg.out_dir, cfg.dataset), cfg.ckpt)
    model = Model.load(path, mode=cfg.mode)
    cfg.check_memory(model, 1)  # one input line at a time
    if model.src_vocab is None or model.tgt_vocab is None:
        raise CheckpointError(f"{path}: holds no vocabulary, so text cannot be encoded")
    require(not cfg.plot_attention or model.has_attention,
            f"plot_attention: {path} is a model without attention (attention = none)")
    reverse = model.checkpoint_state.get("data", {}).get("reverse_source", False)
    rng = np.random.default_rng(cfg.seed)
    seen = 0
    for line in inputs(cfg):
        seen += 1
        first = respond(model, cfg, line, rng, reverse)
        if cfg.plot_attention and first:
            plot_attention(model, *first, cfg.plot_attention)  # ids without EOS
            print(f"  attention heatmap: {cfg.plot_attention}")
            cfg.plot_attention = ""  # the first input only
    # At a prompt, Ctrl-D before any sentence is how a user quits; a pipe with no lines is an error.
    require(seen or (sys.stdin.isatty() and not cfg.start), "no input: pass --start=... or type or pipe sentences "
                                                            "on stdin")
    return 0


def plot_attention(model, src_ids, out_ids, path):
    """Save the teacher-forced attention weights of `out_ids` over `src_ids` as a heatmap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    src, tgt = pad_batch([src_ids]), pad_batch([out_ids], bos_eos=True)
    weights = model.compile_attention()(src, tgt)[:, :, 0]  # (T_out + 1, Ts): EOS included
    rows = [model.tgt_vocab.itos[i] for i in out_ids] + ["</s>"]
    cols = [model.src_vocab.itos[i] for i in src_ids]
    fig, ax = plt.subplots(figsize=(0.35 * len(cols) + 2, 0.35 * len(rows) + 1.5))
    ax.imshow(weights, cmap="Greys", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=90)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("source")
    ax.set_ylabel("output")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except (ConfigError, CheckpointError) as err:
        sys.exit(f"error: {err}")
    except KeyboardInterrupt:  # Ctrl-C at the prompt or while decoding: quit, as Ctrl-D does
        print(file=sys.stderr)
        sys.exit(130)
