"""Sample next sentences from a checkpoint.

    python sample.py --start="In the beginning God created the heaven and the earth."
    echo "the house is on fire" | python sample.py --num_samples=5 --temperature=0.8
    python sample.py --dataset=mybook --start="It was a dark and stormy night."
    python sample.py --dataset=kjv_es --beam_size=5 --start="And God said"
    python sample.py --dataset=kjv_es --start="..." --plot_attention=attention.png
    python sample.py --help

The checkpoint is <out_dir>/ckpt_best.npz, out_dir defaulting to out/<dataset> as in
train.py. Each input line is tokenised as in training, encoded, and decoded num_samples times:
greedily when temperature is 0, else by sampling at that temperature. With beam_size > 1,
beam search gives one output per line instead. --plot_attention saves a source x output
heatmap of the attention weights for the first input (attention models).
"""
import math
import os
import sys
from dataclasses import dataclass

import numpy as np

import backend
from configurator import ConfigError, configure, require, setting
from dataset import pad_batch
from runs import run_dir
from checkpoint import CheckpointError, checkpoint_path
from model import Model
from vocab import UNK_ID
from decode import generate


@dataclass
class SampleConfig:
    dataset: str = setting("kjv", "the run of this dataset (out/<dataset>), unless out_dir is given")
    out_dir: str = setting("", "run folder whose checkpoint to load; empty = out/<dataset>")
    ckpt: str = setting("best", "best, latest, step<N>, or a path to an .npz")
    start: str = setting("", "input sentence; empty = read lines from stdin")
    num_samples: int = setting(3, "outputs per input")
    temperature: float = setting(0.8, "0 = greedy; higher = more varied")
    beam_size: int = setting(1, "1 = greedy or sampling (temperature); > 1 = beam search")
    length_norm: float = setting(1.0, "beam ranks by log p / length**length_norm")
    no_repeat_ngram_size: int = setting(0, "n > 0: no output repeats an n-gram (a guard against loops)")
    plot_attention: str = setting("", "save the first input's attention heatmap to this PNG")
    max_len: int = setting(60, "longest output, in tokens")
    seed: int = setting(1337, "sampling seed")
    mode: str = setting(backend.DEFAULT_MODE, f"compile mode: {', '.join(backend.MODES)}")


def main(argv):
    cfg = SampleConfig()
    configure([cfg], argv, __doc__.strip())
    require(cfg.num_samples > 0, f"num_samples={cfg.num_samples}: must be positive")
    require(cfg.max_len > 0, f"max_len={cfg.max_len}: must be positive")
    for name in ("temperature", "length_norm"):
        require(math.isfinite(getattr(cfg, name)), f"{name}={getattr(cfg, name)}: must be a finite number")
    require(cfg.temperature >= 0, f"temperature={cfg.temperature}: must not be negative")
    require(cfg.seed >= 0, f"seed={cfg.seed}: must not be negative")
    if cfg.plot_attention:
        if not cfg.plot_attention.lower().endswith(".png"):
            cfg.plot_attention += ".png"  # the file matplotlib would write; said as it is
        folder = os.path.dirname(os.path.abspath(cfg.plot_attention))
        require(os.path.isdir(folder), f"plot_attention={cfg.plot_attention}: the folder {folder} does not exist")
    require(cfg.beam_size >= 1, f"beam_size={cfg.beam_size}: must be at least 1")
    require(cfg.no_repeat_ngram_size >= 0, f"no_repeat_ngram_size={cfg.no_repeat_ngram_size}: must not be negative")
    path = checkpoint_path(run_dir(cfg.out_dir, cfg.dataset), cfg.ckpt)
    model = Model.load(path, mode=cfg.mode)
    if model.src_vocab is None or model.tgt_vocab is None:
        raise CheckpointError(f"{path}: holds no vocabulary, so text cannot be encoded")
    require(not cfg.plot_attention or model.attentive,
            f"plot_attention: {path} is a model without attention (attention = none)")
    reverse = model.checkpoint_state.get("data", {}).get("reverse_source", False)
    lines = [cfg.start] if cfg.start else [line for line in sys.stdin.read().splitlines() if line.strip()]
    require(lines, "no input: pass --start=... or pipe sentences on stdin")
    rng = np.random.default_rng(cfg.seed)
    for line in lines:
        tokens = model.src_vocab.tokens(line)
        ids = model.src_vocab.encode(tokens)
        known = sum(i != UNK_ID for i in ids)
        print(f"> {line}")
        if not tokens:
            print("  (no words in this input; skipped)")
            continue
        if not known:
            print("  (every word is outside the vocabulary; the model sees only <unk>)")
        ids = ids[::-1] if reverse else ids
        n = 1 if cfg.temperature == 0 or cfg.beam_size > 1 else cfg.num_samples  # greedy outputs would repeat
        outputs, logps = generate(model, pad_batch([ids] * n), cfg.max_len, cfg.temperature, rng, cfg.beam_size,
                                  cfg.length_norm, cfg.no_repeat_ngram_size)
        for out, logp in zip(outputs, logps):
            print(f"  {model.tgt_vocab.text(out)}    [log p = {logp:.1f}]")
        if cfg.plot_attention:
            plot_attention(model, ids, outputs[0], cfg.plot_attention)  # ids without EOS
            print(f"  attention heatmap: {cfg.plot_attention}")
            cfg.plot_attention = ""  # the first input only
    return 0


def print_val_samples(model, pairs, n, max_len, reverse_source, rng):
    """Greedy and sampled outputs for n validation sources, beside the reference (the end of
    a training run)."""
    if not n or not pairs:
        return
    chosen = [pairs[i] for i in rng.choice(len(pairs), min(n, len(pairs)), replace=False)]
    src = pad_batch([s for s, _ in chosen])
    greedy, _ = generate(model, src, max_len)
    sampled, _ = generate(model, src, max_len, temperature=0.8, rng=rng)
    for (s, t), g, smp in zip(chosen, greedy, sampled):
        print(f"\n  source:    {model.src_vocab.text(s[::-1] if reverse_source else s)}")
        print(f"  reference: {model.tgt_vocab.text(t)}")
        print(f"  greedy:    {model.tgt_vocab.text(g)}")
        print(f"  sampled:   {model.tgt_vocab.text(smp)}  (temperature 0.8)")


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
