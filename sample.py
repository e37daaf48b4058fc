"""Sample next sentences from a checkpoint.

    python sample.py --start="In the beginning God created the heaven and the earth."
    echo "the house is on fire" | python sample.py --num_samples=5 --temperature=0.8
    python sample.py --help

Each input line is tokenised as in training, encoded, and decoded num_samples times:
greedily when temperature is 0, else by sampling at that temperature.
"""
import os
import sys
from dataclasses import dataclass

import numpy as np

import backend
from configurator import ConfigError, configure, require, setting
from dataset import pad_batch
from model import CheckpointError, Model
from vocab import UNK_ID, tokenize


@dataclass
class SampleConfig:
    out_dir: str = setting("out/kjv", "run folder whose checkpoint to load")
    ckpt: str = setting("best", "best, latest, or a path to an .npz")
    start: str = setting("", "input sentence; empty = read lines from stdin")
    num_samples: int = setting(3, "outputs per input")
    temperature: float = setting(0.8, "0 = greedy; higher = more varied")
    max_len: int = setting(60, "longest output, in tokens")
    seed: int = setting(1337, "sampling seed")
    mode: str = setting(backend.DEFAULT_MODE, f"compile mode: {', '.join(backend.MODES)}")


def main(argv):
    cfg = SampleConfig()
    configure([cfg], argv, __doc__.strip())
    require(cfg.num_samples > 0, f"num_samples={cfg.num_samples}: must be positive")
    require(cfg.max_len > 0, f"max_len={cfg.max_len}: must be positive")
    require(cfg.temperature >= 0, f"temperature={cfg.temperature}: must not be negative")
    path = cfg.ckpt if cfg.ckpt.endswith(".npz") else os.path.join(cfg.out_dir, f"ckpt_{cfg.ckpt}.npz")
    model = Model.load(path, mode=cfg.mode)
    if model.src_vocab is None or model.tgt_vocab is None:
        raise CheckpointError(f"{path}: holds no vocabulary, so text cannot be encoded")
    reverse = model.checkpoint_state.get("data", {}).get("reverse_source", False)
    lines = [cfg.start] if cfg.start else [line for line in sys.stdin.read().splitlines() if line.strip()]
    require(lines, "no input: pass --start=... or pipe sentences on stdin")
    rng = np.random.default_rng(cfg.seed)
    for line in lines:
        tokens = tokenize(line)
        ids = model.src_vocab.encode(tokens)
        known = sum(i != UNK_ID for i in ids)
        print(f"> {line}")
        if not tokens:
            print("  (no words in this input; skipped)")
            continue
        if not known:
            print("  (every word is outside the vocabulary; the model sees only <unk>)")
        ids = ids[::-1] if reverse else ids
        n = 1 if cfg.temperature == 0 else cfg.num_samples  # greedy outputs would repeat
        src = pad_batch([ids] * n)  # (Ts, n)
        outputs, logps = model.decode(src, max_len=cfg.max_len, temperature=cfg.temperature, rng=rng)
        for out, logp in zip(outputs, logps):
            print(f"  {model.tgt_vocab.decode(out)}    [log p = {logp:.1f}]")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except (ConfigError, CheckpointError) as err:
        sys.exit(f"error: {err}")
