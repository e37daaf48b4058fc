"""English -> Spanish (KJV -> Reina-Valera 1909) at equal wall-clock: Bahdanau attention,
+ input feeding (Luong et al. 2015), + coverage (Tu et al. 2016), and both.

    python data/kjv_es/prepare.py
    python benchmarks/attention_variants.py [--minutes 20] [--parallel 2]

Each variant is config/kjv_es.toml (bidirectional GRU encoder, Bahdanau attention) with one
or two settings changed, trained for --minutes of wall-clock time in its own process with one
BLAS thread, --parallel of them at a time. Then the best checkpoint (lowest val loss) of each
is scored on the test split: perplexity, and BLEU and chrF of its beam-5 translations. The
coverage columns read the teacher-forced attention over each translation: a source word is
attended when it has the largest weight at an output step, so `never` is the fraction of
source words no output word (EOS excluded) attended, and `twice` the fraction attended at
two or more output steps: the under- and over-translation coverage models aim at. Writes
benchmarks/attention_variants.json and prints a markdown table.
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

VARIANTS = {
    "bahdanau": [],
    "input_feeding": ["--input_feeding=true"],
    "coverage": ["--attention=coverage"],
    "coverage_input_feeding": ["--attention=coverage", "--input_feeding=true"],
}


def train_all(names, minutes, parallel, out_root):
    """Train each variant for `minutes`, `parallel` processes at a time; their commands."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    commands, waiting, running = {}, list(names), {}
    while waiting or running:
        while waiting and len(running) < parallel:
            name = waiting.pop(0)
            out_dir = os.path.join(out_root, name)
            os.makedirs(out_dir, exist_ok=True)
            cmd = [sys.executable, "train.py", "config/kjv_es.toml", *VARIANTS[name], f"--out_dir={out_dir}",
                   f"--max_minutes={minutes}", "--overwrite=true"]
            log = open(os.path.join(out_dir, "train.out"), "w")
            running[name] = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            commands[name] = " ".join(cmd[1:])
        for name, proc in list(running.items()):
            if proc.poll() is not None:
                del running[name]
                if proc.returncode != 0:
                    sys.exit(f"error: {commands[name]} failed; see {out_root}/{name}/train.out")
        time.sleep(2)
    return commands


def attended_counts(model, pairs, outputs, batch_size=64):
    """(source words, never attended, attended at 2+ output steps) over the translations."""
    import numpy as np

    from dataset import eval_batches, make_batch

    f = model.compile_attention()
    total = never = twice = 0
    for idx in eval_batches(pairs, batch_size):
        src, tgt = make_batch([(pairs[i][0], np.array(outputs[i], dtype=np.int32)) for i in idx])
        weights = f(src, tgt)  # (Tt - 1, Ts, B): every output step, EOS included
        for b, i in enumerate(idx):
            n_src, n_out = len(pairs[i][0]), len(outputs[i])  # the output's EOS step excluded
            if n_src <= 0:
                continue
            counts = np.bincount(weights[:n_out, :, b].argmax(axis=1), minlength=n_src)
            total, never, twice = total + n_src, never + int((counts == 0).sum()), twice + int((counts >= 2).sum())
    return total, never, twice


def evaluate(out_dir, beam_size, max_len):
    """Test perplexity, BLEU, chrF and the coverage counts of a run's best checkpoint."""
    from checkpoint import checkpoint_path
    from dataset import dataset_dir, load_dataset
    from model import Model
    from scoring import bleu_tokenize, decode_pairs, perplexity, read_references, score

    model = Model.load(checkpoint_path(out_dir, "best"))
    data_dir = dataset_dir("kjv_es")
    _, _, _, splits = load_dataset(data_dir, need=("test",))
    pairs = splits["test"]
    started = time.time()
    outputs = decode_pairs(model, pairs, max_len=max_len, beam_size=beam_size)
    decode_seconds = time.time() - started
    hypotheses = [model.tgt_vocab.decode(out) for out in outputs]
    result = {"test_ppl": round(perplexity(model, pairs)["ppl"], 2)}
    result.update(score(hypotheses, read_references(data_dir, "test", len(pairs)), bleu_tokenize(model.tgt_vocab)))
    total, never, twice = attended_counts(model, pairs, outputs)
    result.update(never_attended=round(never / total, 4), attended_twice=round(twice / total, 4),
                  source_words=total, decode_seconds=round(decode_seconds, 1), step=model.checkpoint_state.get("step"))
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=20.0, help="training budget per variant, wall-clock")
    ap.add_argument("--parallel", type=int, default=2, help="variants trained at a time (one core each)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    ap.add_argument("--beam_size", type=int, default=5, help="beam of the test translations")
    ap.add_argument("--out_root", default="out/bench_attention_variants", help="run folders go under here")
    ap.add_argument("--skip_training", action="store_true", help="score the runs already under --out_root")
    ap.add_argument("--json", default=os.path.join(ROOT, "benchmarks", "attention_variants.json"), help="results")
    args = ap.parse_args(argv)
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or args.parallel < 1 or args.minutes <= 0:
        ap.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}" if unknown else
                 "--parallel and --minutes must be positive")
    out_root = os.path.join(ROOT, args.out_root)
    commands = {} if args.skip_training else train_all(names, args.minutes, args.parallel, out_root)
    results = []
    for name in names:
        out_dir = os.path.join(out_root, name)
        log = [json.loads(line) for line in open(os.path.join(out_dir, "log.jsonl"))]
        row = {"variant": name, "train_minutes": args.minutes, "steps": log[-1]["step"],
               "best_val_ppl": round(min(r["val_ppl"] for r in log), 2), "decoding": f"beam {args.beam_size}"}
        row.update(evaluate(out_dir, args.beam_size, 100), command=commands.get(name, ""))
        results.append(row)
        print(json.dumps(row), flush=True)
    with open(args.json, "w") as f:
        json.dump({"machine": f"2 CPU cores, no GPU; {args.parallel} runs at a time, 1 BLAS thread each",
                   "results": results}, f, indent=1)
    print("| variant | steps | val ppl | test ppl | BLEU | chrF | never attended | attended twice+ |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['variant']} | {r['steps']} | {r['best_val_ppl']} | {r['test_ppl']} | {r['bleu']} | {r['chrf']} | "
              f"{r['never_attended']:.1%} | {r['attended_twice']:.1%} |")


if __name__ == "__main__":
    main()
