"""Scoring a model on a split, shared by train.py, evaluate.py and sample.py: perplexity,
exact match, translations scored with sacrebleu (BLEU and chrF), and the samples printed at
the end of a run.

With word tokens, hypotheses and references are lowercased word tokens joined by spaces, so
BLEU runs with sacrebleu's tokenize="none" and an <unk> in a hypothesis counts as a wrong
word; with SentencePiece, both are text and sacrebleu tokenises them (13a).
"""
import math
import os

from dataset import DataError, eval_batches, make_batch, pad_batch
from decode import generate


def perplexity(model, pairs, batch_size=64, progress=None, per_sentence=False):
    """{"loss", "ppl", "tokens"}: the mean cross-entropy per target token (EOS included)
    over `pairs`, its perplexity, and the token count; with `per_sentence`, also "sentences":
    each pair's own perplexity, in the order of `pairs`, from the same pass. `progress(n)` is
    called after each batch of n pairs."""
    score_fn = model.compile_sentence_nll() if per_sentence else model.compile_eval()
    nll = n_tokens = 0.0
    sentences = [0.0] * len(pairs)
    for idx in eval_batches(pairs, batch_size):
        batch_nll, batch_n = score_fn(*make_batch([pairs[i] for i in idx]))
        if per_sentence:  # (B,) each; under JAX the batch may come back padded
            batch_nll, batch_n = batch_nll[: len(idx)], batch_n[: len(idx)]
            for i, total, n in zip(idx, batch_nll, batch_n):
                sentences[i] = _ppl(float(total), float(n))
        nll, n_tokens = nll + float(batch_nll.sum()), n_tokens + float(batch_n.sum())
        if progress:
            progress(len(idx))
    result = {"loss": nll / max(n_tokens, 1.0), "ppl": _ppl(nll, n_tokens), "tokens": int(n_tokens)}
    return {**result, "sentences": sentences} if per_sentence else result


def _ppl(nll, n_tokens):
    """exp(nll per token), capped at e^50."""
    return math.exp(min(nll / max(n_tokens, 1.0), 50.0))


def decode_pairs(model, pairs, batch_size=64, max_len=100, progress=None, **how):
    """The decoded output ids for every pair's source, in the order of `pairs`; `how` are
    decode.generate's settings (beam_size, no_repeat_ngram_size, ...)."""
    outputs = [None] * len(pairs)
    for idx in eval_batches(pairs, batch_size):
        src, _ = make_batch([pairs[i] for i in idx])
        outs, _ = generate(model, src, max_len, **how)
        for i, out in zip(idx, outs):
            outputs[i] = out
        if progress:
            progress(len(idx))
    return outputs


def translate(model, pairs, batch_size=64, max_len=100, progress=None, **how):
    """Decoded target text for every pair's source (decode_pairs, then the vocabulary's text)."""
    return [model.tgt_vocab.decode(out) for out in decode_pairs(model, pairs, batch_size, max_len, progress, **how)]


def validation_metrics(model, pairs, batch_size, max_decode_len, exact_match_n=0, bleu_n=0, references=None):
    """What train.py logs at each evaluation: val loss and perplexity per target token (EOS
    included); greedy exact match on the first exact_match_n pairs; greedy BLEU and chrF on
    the first bleu_n pairs when the data has references."""
    ppl = perplexity(model, pairs, batch_size)
    metrics = {"val_loss": ppl["loss"], "val_ppl": ppl["ppl"]}
    if exact_match_n:
        subset = pairs[:exact_match_n]
        outputs = decode_pairs(model, subset, batch_size, max_decode_len)
        metrics["val_exact_match"] = sum(list(t) == out for (_, t), out in zip(subset, outputs)) / len(subset)
    if references is not None and bleu_n:
        n = min(bleu_n, len(pairs))
        scores = score(translate(model, pairs[:n], batch_size, max_decode_len), references[:n],
                       bleu_tokenize(model.tgt_vocab))
        metrics["val_bleu"], metrics["val_chrf"] = scores["bleu"], scores["chrf"]
    return metrics


def bleu_tokenize(vocab):
    return "none" if vocab.kind == "word" else "13a"


def read_references(data_dir, split, n_pairs):
    """The reference translations of a split, one per pair (<split>.ref.txt)."""
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

    # force: with tokenize='none' the text is tokenised on purpose (sacrebleu would warn of it)
    bleu = sacrebleu.corpus_bleu(hypotheses, [references], tokenize=tokenize, force=tokenize == "none")
    chrf = sacrebleu.corpus_chrf(hypotheses, [references])
    return {"bleu": round(bleu.score, 2), "chrf": round(chrf.score, 2)}


def print_val_samples(model, pairs, n, max_len, reverse_source, rng):
    """Greedy, sampled and nucleus-sampled outputs for n validation sources, beside the
    reference (the end of a training run). Greedy decoding repeats no 3-gram (the guard the
    README recommends): a young model's greedy output otherwise loops."""
    if not n or not pairs:
        return
    chosen = [pairs[i] for i in rng.choice(len(pairs), min(n, len(pairs)), replace=False)]
    src = pad_batch([s for s, _ in chosen])
    greedy, _ = generate(model, src, max_len, no_repeat_ngram_size=3)
    sampled, _ = generate(model, src, max_len, temperature=0.8, rng=rng)
    nucleus, _ = generate(model, src, max_len, temperature=1.0, rng=rng, top_p=0.9)
    for (s, t), g, smp, nuc in zip(chosen, greedy, sampled, nucleus):
        print(f"\n  source:    {model.src_vocab.text(s[::-1] if reverse_source else s)}")
        print(f"  reference: {model.tgt_vocab.text(t)}")
        print(f"  greedy:    {model.tgt_vocab.text(g)}  (no repeated 3-gram)")
        print(f"  sampled:   {model.tgt_vocab.text(smp)}  (temperature 0.8)")
        print(f"  nucleus:   {model.tgt_vocab.text(nuc)}  (top_p 0.9)")
