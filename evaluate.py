"""Score a checkpoint on a split: perplexity for any dataset, and BLEU and chrF (sacrebleu)
of its translations where the dataset has references.

    python evaluate.py                                   # out/kjv: test perplexity
    python evaluate.py --dataset=kjv_es --beam_size=5    # translation: perplexity, BLEU, chrF
    python evaluate.py --dataset=kjv_es --limit=200      # the first 200 test pairs only
    python evaluate.py --out_dir=out/kjv_es_plain --dataset=kjv_es   # any run folder
    python evaluate.py --help

The checkpoint is <out_dir>/ckpt_best.npz, out_dir defaulting to out/<dataset> as in
train.py. References come from <dataset>/<split>.ref.txt, written by the dataset's
prepare.py (scoring.py says how BLEU tokenises). Writes
eval_<checkpoint>_<split>_beam<k>[_norepeat<n>][_limit<N>].json, and .txt (the hypotheses)
where there are references, beside the checkpoint, e.g. out/kjv_es/eval_best_test_beam5.json.
"""
import json
import math
import os
import sys
from dataclasses import dataclass

import numpy as np

import backend
from checkpoint import CheckpointError, checkpoint_path
from configurator import ConfigError, configure, require, setting
from dataset import DataError, dataset_dir, load_dataset
from model import Model
from runs import run_dir
from decode import MAX_BEAM, MAX_LEN
from scoring import bleu_tokenize, perplexity, read_references, score, translate


@dataclass
class EvalConfig:
    dataset: str = setting("kjv", "the run of this dataset (out/<dataset>), unless out_dir is given")
    out_dir: str = setting("", "run folder whose checkpoint to score; empty = out/<dataset>")
    ckpt: str = setting("best", "best, latest, step<N>, or a path to an .npz (results go beside it)")
    split: str = setting("test", "val or test")
    limit: int = setting(0, "score only the split's first N pairs; 0 = all of them")
    beam_size: int = setting(1, f"1 = greedy decoding (translations only); at most {MAX_BEAM}")
    length_norm: float = setting(1.0, "beam ranks by log p / length**length_norm")
    no_repeat_ngram_size: int = setting(0, "n > 0: no output repeats an n-gram (a guard against loops)")
    unk_penalty: float = setting(math.inf, "subtracted from <unk>'s log-probability when decoding; inf = never <unk>")
    batch_size: int = setting(64, "sentences scored and decoded together")
    max_len: int = setting(100, f"longest output, in tokens (at most {MAX_LEN})")
    mode: str = setting(backend.DEFAULT_MODE, f"compile mode: {', '.join(backend.MODES)}")


def check(cfg):
    require(cfg.mode in backend.MODES, f"mode={cfg.mode!r}: use one of {', '.join(backend.MODES)}")
    backend.compile_mode(cfg.mode)  # mode=JAX without JAX: one line, before the checkpoint is read
    require(cfg.split in ("val", "test"), f"split={cfg.split!r}: use val or test")
    require(cfg.limit >= 0, f"limit={cfg.limit}: must not be negative")
    require(1 <= cfg.beam_size <= MAX_BEAM, f"beam_size={cfg.beam_size}: must be between 1 and {MAX_BEAM}")
    require(cfg.no_repeat_ngram_size >= 0, f"no_repeat_ngram_size={cfg.no_repeat_ngram_size}: must not be negative")
    require(math.isfinite(cfg.length_norm), f"length_norm={cfg.length_norm}: must be a finite number")
    require(cfg.unk_penalty >= 0, f"unk_penalty={cfg.unk_penalty}: must not be negative (inf bans <unk>)")
    require(cfg.batch_size > 0, f"batch_size={cfg.batch_size}: must be positive")
    require(0 < cfg.max_len <= MAX_LEN, f"max_len={cfg.max_len}: must be between 1 and {MAX_LEN}")


def main(argv):
    from tqdm import tqdm

    cfg = EvalConfig()
    explicit = configure([cfg], argv, __doc__.strip())
    check(cfg)
    path = checkpoint_path(run_dir(cfg.out_dir, cfg.dataset), cfg.ckpt)
    model = Model.load(path, mode=cfg.mode)
    # The dataset given, else the one the checkpoint was trained on.
    trained_on = model.checkpoint_state.get("data", {}).get("dataset", cfg.dataset)
    data_dir = dataset_dir(cfg.dataset if "dataset" in explicit else trained_on)
    meta, src_vocab, tgt_vocab, splits = load_dataset(data_dir, need=(cfg.split,))
    if model.src_vocab != src_vocab or model.tgt_vocab != tgt_vocab:
        sizes = lambda a, b: f"{len(a) if a else 0:,}/{len(b) if b else 0:,}"  # noqa: E731
        raise DataError(f"{data_dir}: its vocabulary (source/target {sizes(src_vocab, tgt_vocab)} words) differs from "
                        f"{path}'s ({sizes(model.src_vocab, model.tgt_vocab)}, trained on {trained_on}); the scores "
                        "would be meaningless")
    everything = splits[cfg.split]
    pairs = everything[: cfg.limit] if cfg.limit else everything
    has_refs = os.path.exists(os.path.join(data_dir, f"{cfg.split}.ref.txt"))
    references = read_references(data_dir, cfg.split, len(everything))[: len(pairs)] if has_refs else None
    with tqdm(total=len(pairs) * (2 if has_refs else 1), unit="pair", desc=f"{cfg.split}", dynamic_ncols=True) as bar:
        result = {"split": cfg.split, "n_pairs": len(pairs), "of": len(everything), "checkpoint": path,
                  "step": model.checkpoint_state.get("step")}
        result.update(perplexity(model, pairs, cfg.batch_size, progress=bar.update))
        if has_refs:
            how = dict(beam_size=cfg.beam_size, length_norm=cfg.length_norm, unk_penalty=cfg.unk_penalty,
                       no_repeat_ngram_size=cfg.no_repeat_ngram_size)
            hypotheses = translate(model, pairs, cfg.batch_size, cfg.max_len, progress=bar.update, **how)
            result.update(score(hypotheses, references, bleu_tokenize(model.tgt_vocab)), **how,
                          mean_output_len=float(np.mean([len(h.split()) for h in hypotheses])))
    # Beside the checkpoint scored, named after it: never over another run's or checkpoint's files.
    name = os.path.basename(path)[: -len(".npz")].removeprefix("ckpt_")
    guard = f"_norepeat{cfg.no_repeat_ngram_size}" if cfg.no_repeat_ngram_size else ""
    subset = f"_limit{cfg.limit}" if cfg.limit and cfg.limit < len(everything) else ""
    stem = os.path.join(os.path.dirname(path) or ".", f"eval_{name}_{cfg.split}_beam{cfg.beam_size}{guard}{subset}")
    with open(stem + ".json", "w", encoding="utf-8") as f:
        json.dump({k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in result.items()}, f, indent=1)
    if has_refs:
        with open(stem + ".txt", "w", encoding="utf-8") as f:
            f.writelines(h + "\n" for h in hypotheses)
    print(f"{cfg.split}: perplexity {result['ppl']:.2f} over {result['tokens']:,} target tokens of {len(pairs):,} pairs"
          + (f"; BLEU {result['bleu']}, chrF {result['chrf']}" if has_refs else "") + f"  ({stem}.json)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except (ConfigError, CheckpointError, DataError) as err:
        sys.exit(f"error: {err}")
