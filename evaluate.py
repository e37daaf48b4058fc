"""Score a checkpoint on a split: perplexity for any dataset, and BLEU and chrF (sacrebleu)
of its translations where the dataset has references.

    python evaluate.py                                   # out/kjv: test perplexity
    python evaluate.py --dataset=kjv_es --beam_size=5    # translation: perplexity, BLEU, chrF
    python evaluate.py --dataset=kjv_es --limit=200      # the first 200 test pairs only
    python evaluate.py --out_dir=out/kjv_es_plain --dataset=kjv_es   # any run folder
    python evaluate.py --dataset=kjv_es --src_file=new.en --ref_file=new.es   # any text and its references
    python evaluate.py --help

The checkpoint is <out_dir>/ckpt_best.npz, out_dir defaulting to out/<dataset> as in
train.py. References come from <dataset>/<split>.ref.txt, written by the dataset's
prepare.py (scoring.py says how BLEU tokenises). Writes
eval_<checkpoint>_<split>_beam<k>[_norepeat<n>][_limit<N>].json, and .txt (the hypotheses)
where there are references, beside the checkpoint, e.g. out/kjv_es/eval_best_test_beam5.json;
for a file pair, <split> is file-<name> and .ppl.txt holds each line's perplexity.
"""
import json
import math
import os
import sys
from dataclasses import dataclass

import numpy as np

from checkpoint import CheckpointError, checkpoint_path
from configurator import ConfigError, configure, require, setting
from dataset import DataError, dataset_dir, load_dataset
from model import Model
from runs import run_dir
from decode import MAX_LEN
from decode_config import DecodeConfig
from scoring import bleu_tokenize, perplexity, read_references, score, translate


@dataclass
class EvalConfig(DecodeConfig):
    ckpt: str = setting("best", "best, latest, step<N>, or a path to an .npz (results go beside it)")
    max_len: int = setting(100, f"longest output, in tokens (at most {MAX_LEN})")
    split: str = setting("test", "val or test")
    src_file: str = setting("", "score these source sentences (one per line) instead of a split, against ref_file")
    ref_file: str = setting("", "the reference translation of each line of src_file")
    limit: int = setting(0, "score only the split's first N pairs; 0 = all of them")
    batch_size: int = setting(64, "sentences scored and decoded together")

    def check(self):
        super().check()
        require(self.split in ("val", "test"), f"split={self.split!r}: use val or test")
        require(self.limit >= 0, f"limit={self.limit}: must not be negative")
        require(self.batch_size > 0, f"batch_size={self.batch_size}: must be positive")
        require(bool(self.src_file) == bool(self.ref_file), "src_file and ref_file go together: give both, or neither")


def read_lines(path):
    """The lines of a UTF-8 text file, or DataError naming the file and line."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except OSError as err:
        raise DataError(f"{path}: {err.strerror}") from None
    except UnicodeDecodeError as err:
        with open(path, "rb") as f:
            line = f.read()[: err.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8") from None


def file_pairs(model, src_file, ref_file, reverse_source):
    """(pairs, references) of a source file and its references, tokenised by the model's
    vocabularies as its training data was; references as BLEU scores them (word tokens
    joined by spaces, or the text for SentencePiece)."""
    sources, refs = read_lines(src_file), read_lines(ref_file)
    if len(sources) != len(refs) or not sources:
        raise DataError(f"{src_file} has {len(sources):,} lines and {ref_file} {len(refs):,}: one reference per "
                        "source line is needed")
    src_ids = [model.src_vocab.encode(model.src_vocab.tokens(s)) for s in sources]
    empty = next((k for k, s in enumerate(src_ids, 1) if not s), None)
    if empty:
        raise DataError(f"{src_file}:{empty}: an empty source line (nothing to translate)")
    tgt_tokens = [model.tgt_vocab.tokens(r) for r in refs]
    pairs = [(np.array(s[::-1] if reverse_source else s, dtype=np.int32), np.array(model.tgt_vocab.encode(t), dtype=np.int32))
             for s, t in zip(src_ids, tgt_tokens)]
    references = [" ".join(t) for t in tgt_tokens] if model.tgt_vocab.kind == "word" else [r.strip() for r in refs]
    return pairs, references


def split_pairs(cfg, explicit, model, path):
    """(pairs, references or None) of the split cfg.split of the dataset given, else of the
    one the checkpoint was trained on; its vocabulary must be the checkpoint's."""
    trained_on = model.checkpoint_state.get("data", {}).get("dataset", cfg.dataset)
    data_dir = dataset_dir(cfg.dataset if "dataset" in explicit else trained_on)
    meta, src_vocab, tgt_vocab, splits = load_dataset(data_dir, need=(cfg.split,))
    if model.src_vocab != src_vocab or model.tgt_vocab != tgt_vocab:
        sizes = lambda a, b: f"{len(a) if a else 0:,}/{len(b) if b else 0:,}"  # noqa: E731
        raise DataError(f"{data_dir}: its vocabulary (source/target {sizes(src_vocab, tgt_vocab)} words) differs from "
                        f"{path}'s ({sizes(model.src_vocab, model.tgt_vocab)}, trained on {trained_on}); the scores "
                        "would be meaningless")
    everything = splits[cfg.split]
    has_refs = os.path.exists(os.path.join(data_dir, f"{cfg.split}.ref.txt"))
    return everything, read_references(data_dir, cfg.split, len(everything)) if has_refs else None


def main(argv):
    from tqdm import tqdm

    cfg = EvalConfig()
    explicit = configure([cfg], argv, __doc__.strip())
    cfg.check()
    path = checkpoint_path(run_dir(cfg.out_dir, cfg.dataset), cfg.ckpt)
    model = Model.load(path, mode=cfg.mode)
    cfg.check_memory(model, cfg.batch_size)
    if cfg.src_file:  # a file pair, tokenised by the checkpoint's own vocabularies
        reverse = model.checkpoint_state.get("data", {}).get("reverse_source", False)
        everything, all_refs = file_pairs(model, cfg.src_file, cfg.ref_file, reverse)
        cfg.split = "file-" + os.path.splitext(os.path.basename(cfg.src_file))[0]  # names the results
    else:
        everything, all_refs = split_pairs(cfg, explicit, model, path)
    pairs = everything[: cfg.limit] if cfg.limit else everything
    has_refs = all_refs is not None
    references = all_refs[: len(pairs)] if has_refs else None
    with tqdm(total=len(pairs) * (2 if has_refs else 1), unit="pair", desc=f"{cfg.split}", dynamic_ncols=True) as bar:
        result = {"split": cfg.split, "n_pairs": len(pairs), "of": len(everything), "checkpoint": path,
                  "step": model.checkpoint_state.get("step")}
        result.update(perplexity(model, pairs, cfg.batch_size, progress=bar.update, per_sentence=bool(cfg.src_file)))
        per_sentence = result.pop("sentences", None)
        if has_refs:
            how = cfg.search()
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
    if per_sentence is not None:  # a file pair: each line's perplexity, in the file's order
        with open(stem + ".ppl.txt", "w", encoding="utf-8") as f:
            f.writelines(f"{p:.4f}\n" for p in per_sentence)
    where = f"{stem}.json" + (f"; each sentence's perplexity: {stem}.ppl.txt" if per_sentence else "")
    print(f"{cfg.split}: perplexity {result['ppl']:.2f} over {result['tokens']:,} target tokens of {len(pairs):,} pairs"
          + (f"; BLEU {result['bleu']}, chrF {result['chrf']}" if has_refs else "") + f"  ({where})")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except (ConfigError, CheckpointError, DataError) as err:
        sys.exit(f"error: {err}")
