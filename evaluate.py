"""Score a checkpoint's translations with sacrebleu (BLEU and chrF).

    python evaluate.py --out_dir=out/kjv_es                      # test split, greedy
    python evaluate.py --out_dir=out/kjv_es --beam_size=5        # beam search
    python evaluate.py --help

Hypotheses and references are lowercased word tokens (vocab.tokenize) joined by spaces, so
BLEU runs with sacrebleu's tokenize="none"; an <unk> in a hypothesis counts as a wrong word.
References come from <dataset>/<split>.ref.txt, written by the dataset's prepare.py. Writes
<out_dir>/eval_<split>_beam<k>.json and .txt (the hypotheses).
"""
import json
import os
import sys
from dataclasses import dataclass

import numpy as np

import backend
from beam import beam_search
from configurator import ConfigError, configure, require, setting
from dataset import DataError, dataset_dir, eval_batches, load_dataset, make_batch
from model import CheckpointError, Model, checkpoint_path


@dataclass
class EvalConfig:
    out_dir: str = setting("out/kjv_es", "run folder whose checkpoint to score")
    ckpt: str = setting("best", "best, latest, or a path to an .npz")
    split: str = setting("test", "val or test")
    beam_size: int = setting(1, "1 = greedy decoding")
    length_norm: float = setting(1.0, "beam ranks by log p / length**length_norm")
    batch_size: int = setting(64, "sentences decoded together")
    max_len: int = setting(100, "longest output, in tokens")
    mode: str = setting(backend.DEFAULT_MODE, f"compile mode: {', '.join(backend.MODES)}")


def translate(model, pairs, batch_size=64, max_len=100, beam_size=1, length_norm=1.0):
    """Decoded target text for every pair's source, in the order of `pairs`. beam_size 1
    is greedy decoding in scan; larger beams use beam.beam_search."""
    texts = [None] * len(pairs)
    for idx in eval_batches(pairs, batch_size):
        src, _ = make_batch([pairs[i] for i in idx])
        if beam_size == 1:
            outputs, _ = model.decode(src, max_len=max_len)
        else:
            outputs, _ = beam_search(model, src, beam_size, max_len, length_norm)
        for i, out in zip(idx, outputs):
            texts[i] = model.tgt_vocab.decode(out)
    return texts


def read_references(data_dir, split, n_pairs):
    path = os.path.join(data_dir, f"{split}.ref.txt")
    if not os.path.exists(path):
        raise DataError(f"{path}: missing; this dataset has no references for BLEU")
    with open(path, encoding="utf-8") as f:
        refs = f.read().splitlines()
    if len(refs) != n_pairs:
        raise DataError(f"{path}: {len(refs)} references for {n_pairs} {split} pairs")
    return refs


def score(hypotheses, references):
    """{"bleu", "chrf"} of tokenised hypotheses against one reference each (sacrebleu)."""
    import sacrebleu

    bleu = sacrebleu.corpus_bleu(hypotheses, [references], tokenize="none")
    chrf = sacrebleu.corpus_chrf(hypotheses, [references])
    return {"bleu": round(bleu.score, 2), "chrf": round(chrf.score, 2)}


def main(argv):
    cfg = EvalConfig()
    configure([cfg], argv, __doc__.strip())
    require(cfg.split in ("val", "test"), f"split={cfg.split!r}: use val or test")
    require(cfg.beam_size >= 1, f"beam_size={cfg.beam_size}: must be at least 1")
    require(cfg.batch_size > 0 and cfg.max_len > 0, "batch_size and max_len must be positive")
    path = checkpoint_path(cfg.out_dir, cfg.ckpt)
    model = Model.load(path, mode=cfg.mode)
    data_dir = dataset_dir(model.checkpoint_state.get("data", {}).get("dataset", "kjv_es"))
    _, _, _, splits = load_dataset(data_dir)
    pairs = splits[cfg.split]
    references = read_references(data_dir, cfg.split, len(pairs))
    hypotheses = translate(model, pairs, cfg.batch_size, cfg.max_len, cfg.beam_size, cfg.length_norm)
    result = dict(score(hypotheses, references), split=cfg.split, beam_size=cfg.beam_size,
                  length_norm=cfg.length_norm, checkpoint=path, step=model.checkpoint_state.get("step"),
                  n_sentences=len(pairs), mean_output_len=float(np.mean([len(h.split()) for h in hypotheses])))
    stem = os.path.join(cfg.out_dir, f"eval_{cfg.split}_beam{cfg.beam_size}")
    with open(stem + ".json", "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    with open(stem + ".txt", "w", encoding="utf-8") as f:
        f.writelines(h + "\n" for h in hypotheses)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except (ConfigError, CheckpointError, DataError) as err:
        sys.exit(f"error: {err}")
