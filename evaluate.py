"""Score a checkpoint's translations with sacrebleu (BLEU and chrF).

    python evaluate.py                                   # out/kjv_es (config/kjv_es.toml), test, greedy
    python evaluate.py --beam_size=5                     # beam search
    python evaluate.py --dataset=en_es                   # the run of data/text/prepare.py's en_es
    python evaluate.py --out_dir=out/kjv_es_plain        # any run folder
    python evaluate.py --help

The checkpoint is <out_dir>/ckpt_best.npz, out_dir defaulting to out/<dataset> as in
train.py. With word tokens, hypotheses and references are lowercased word tokens joined by
spaces, so BLEU runs with sacrebleu's tokenize="none" and an <unk> in a hypothesis counts as
a wrong word; with SentencePiece, both are text and sacrebleu tokenises them (13a).
References come from <dataset>/<split>.ref.txt, written by the dataset's prepare.py. Writes
eval_<checkpoint>_<split>_beam<k>[_norepeat<n>].json and .txt (the hypotheses) beside the
checkpoint, e.g. out/kjv_es/eval_best_test_beam5.json.
"""
import json
import math
import os
import sys
from dataclasses import dataclass

import numpy as np

import backend
from decode import generate
from configurator import ConfigError, configure, require, setting
from dataset import DataError, dataset_dir, eval_batches, load_dataset, make_batch
from runs import run_dir
from checkpoint import CheckpointError, checkpoint_path
from model import Model


@dataclass
class EvalConfig:
    dataset: str = setting("kjv_es", "the run of this dataset (out/<dataset>), unless out_dir is given")
    out_dir: str = setting("", "run folder whose checkpoint to score; empty = out/<dataset>")
    ckpt: str = setting("best", "best, latest, step<N>, or a path to an .npz (results go beside it)")
    split: str = setting("test", "val or test")
    beam_size: int = setting(1, "1 = greedy decoding")
    length_norm: float = setting(1.0, "beam ranks by log p / length**length_norm")
    no_repeat_ngram_size: int = setting(0, "n > 0: no output repeats an n-gram (a guard against loops)")
    batch_size: int = setting(64, "sentences decoded together")
    max_len: int = setting(100, "longest output, in tokens")
    mode: str = setting(backend.DEFAULT_MODE, f"compile mode: {', '.join(backend.MODES)}")


def translate(model, pairs, batch_size=64, max_len=100, beam_size=1, length_norm=1.0, no_repeat_ngram_size=0):
    """Decoded target text for every pair's source, in the order of `pairs` (decode.generate:
    greedy, or beam search with beam_size > 1)."""
    texts = [None] * len(pairs)
    for idx in eval_batches(pairs, batch_size):
        src, _ = make_batch([pairs[i] for i in idx])
        outputs, _ = generate(model, src, max_len, 0.0, None, beam_size, length_norm, no_repeat_ngram_size)
        for i, out in zip(idx, outputs):
            texts[i] = model.tgt_vocab.decode(out)
    return texts


def validation_metrics(model, pairs, batch_size, max_decode_len, exact_match_n=0, bleu_n=0, references=None):
    """What train.py logs at each evaluation: val loss and perplexity per target token (EOS
    included); greedy exact match on the first exact_match_n pairs; greedy BLEU and chrF on
    the first bleu_n pairs when the data has references."""
    eval_fn = model.compile_eval()
    nll = n_tokens = 0.0
    for idx in eval_batches(pairs, batch_size):
        batch_nll, batch_n = eval_fn(*make_batch([pairs[i] for i in idx]))
        nll, n_tokens = nll + float(batch_nll), n_tokens + float(batch_n)
    metrics = {"val_loss": nll / n_tokens, "val_ppl": math.exp(min(nll / n_tokens, 50.0))}
    if exact_match_n:
        subset = pairs[:exact_match_n]
        outputs = []
        for idx in eval_batches(subset, batch_size):
            src, _ = make_batch([subset[i] for i in idx])
            outs, _ = generate(model, src, max_decode_len)
            outputs += [(i, out) for i, out in zip(idx, outs)]
        metrics["val_exact_match"] = sum(list(subset[i][1]) == out for i, out in outputs) / len(subset)
    if references is not None and bleu_n:
        n = min(bleu_n, len(pairs))
        scores = score(translate(model, pairs[:n], batch_size, max_decode_len), references[:n],
                       bleu_tokenize(model.tgt_vocab))
        metrics["val_bleu"], metrics["val_chrf"] = scores["bleu"], scores["chrf"]
    return metrics


def bleu_tokenize(vocab):
    return "none" if vocab.kind == "word" else "13a"


def read_references(data_dir, split, n_pairs):
    path = os.path.join(data_dir, f"{split}.ref.txt")
    if not os.path.exists(path):
        raise DataError(f"{path}: missing; this dataset has no references for BLEU")
    with open(path, encoding="utf-8") as f:
        refs = f.read().splitlines()
    if len(refs) != n_pairs:
        raise DataError(f"{path}: {len(refs)} references for {n_pairs} {split} pairs")
    return refs


def score(hypotheses, references, tokenize="none"):
    """{"bleu", "chrf"} of hypotheses against one reference each (sacrebleu); "none" for
    word tokens joined by spaces, "13a" for text (SentencePiece datasets)."""
    import sacrebleu

    bleu = sacrebleu.corpus_bleu(hypotheses, [references], tokenize=tokenize)
    chrf = sacrebleu.corpus_chrf(hypotheses, [references])
    return {"bleu": round(bleu.score, 2), "chrf": round(chrf.score, 2)}


def main(argv):
    cfg = EvalConfig()
    configure([cfg], argv, __doc__.strip())
    require(cfg.split in ("val", "test"), f"split={cfg.split!r}: use val or test")
    require(cfg.beam_size >= 1, f"beam_size={cfg.beam_size}: must be at least 1")
    require(cfg.no_repeat_ngram_size >= 0, f"no_repeat_ngram_size={cfg.no_repeat_ngram_size}: must not be negative")
    require(math.isfinite(cfg.length_norm), f"length_norm={cfg.length_norm}: must be a finite number")
    require(cfg.batch_size > 0 and cfg.max_len > 0, "batch_size and max_len must be positive")
    path = checkpoint_path(run_dir(cfg.out_dir, cfg.dataset), cfg.ckpt)
    model = Model.load(path, mode=cfg.mode)
    data_dir = dataset_dir(model.checkpoint_state.get("data", {}).get("dataset", cfg.dataset))
    _, src_vocab, tgt_vocab, splits = load_dataset(data_dir)
    if model.src_vocab != src_vocab or model.tgt_vocab != tgt_vocab:
        raise DataError(f"{data_dir}: its vocabulary differs from {path}'s (prepared again with other "
                        "settings?); the scores would be meaningless")
    pairs = splits[cfg.split]
    references = read_references(data_dir, cfg.split, len(pairs))
    hypotheses = translate(model, pairs, cfg.batch_size, cfg.max_len, cfg.beam_size, cfg.length_norm,
                           cfg.no_repeat_ngram_size)
    result = dict(score(hypotheses, references, bleu_tokenize(model.tgt_vocab)), split=cfg.split, beam_size=cfg.beam_size,
                  length_norm=cfg.length_norm, no_repeat_ngram_size=cfg.no_repeat_ngram_size, checkpoint=path, step=model.checkpoint_state.get("step"),
                  n_sentences=len(pairs), mean_output_len=float(np.mean([len(h.split()) for h in hypotheses])))
    # Beside the checkpoint scored, named after it: never over another run's or checkpoint's files.
    guard = f"_norepeat{cfg.no_repeat_ngram_size}" if cfg.no_repeat_ngram_size else ""
    name = os.path.basename(path)[: -len(".npz")].removeprefix("ckpt_")
    stem = os.path.join(os.path.dirname(path) or ".", f"eval_{name}_{cfg.split}_beam{cfg.beam_size}{guard}")
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
