"""Train the sequence autoencoder on JapaneseVowels, plot it, and measure it.

    python data/japanese_vowels/prepare.py
    python data/japanese_vowels/autoencode.py [--iterations 3000] [--out_dir out/vowels]

Channels are standardised with the training split's mean and std. 30 training series (a
fixed draw) are held out for validation; the test split is used only for the figures:
- reconstruction MSE per value at the true length, beside predicting each channel's
  training mean (in standardised units, so that baseline is about 1);
- 1-nearest-neighbour speaker accuracy on the test codes, matched against the codes of the
  training split (each code dimension standardised with training statistics);
- how often the predicted length (the first step with p_stop > 0.5) equals the true one.
Writes <out_dir>/model.zip, metrics.json, reconstruction.png and codes.png. Rerunning with
the same --out_dir resumes from model.zip up to --iterations.
"""
import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # the repository root
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402

from autoencoder import NDS2SAEFactory  # noqa: E402
from prepare import load  # noqa: E402


def make_generator(seqs, seed):
    """`gen(batch_size) -> (in_seq, out_seq, last_batch)`: shuffled passes over `seqs`,
    reconstructing each sequence (output = input); seed=None keeps the order."""
    rng = np.random.default_rng(seed) if seed is not None else None
    order, position = np.arange(len(seqs)), 0

    def gen(batch_size):
        nonlocal position
        if position == 0 and rng is not None:
            rng.shuffle(order)
        idx = order[position : position + batch_size]
        position += len(idx)
        last = position >= len(seqs)
        position = 0 if last else position
        batch = [seqs[i] for i in idx]
        return batch, batch, last

    return gen


def one_nn_accuracy(train_codes, train_labels, test_codes, test_labels):
    mean, std = train_codes.mean(0), train_codes.std(0) + 1e-6
    a, b = (train_codes - mean) / std, (test_codes - mean) / std
    dist = (b**2).sum(1)[:, None] - 2 * b @ a.T + (a**2).sum(1)[None]  # (N_test, N_train)
    return float(np.mean(train_labels[dist.argmin(1)] == test_labels))


def plot(out_dir, test, recon, codes, speakers):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 3, figsize=(11, 7), sharex="col")
    for col, i in enumerate((0, 100, 200)):
        for row, ch in enumerate((0, 1, 2)):
            ax = axes[row, col]
            ax.plot(test[i][:, ch], "k.-", label="input")
            ax.plot(recon[i][:, ch], "r.--", label="reconstruction")
            ax.set_title(f"test series {i}, channel {ch}", fontsize=9)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "reconstruction.png"), dpi=90)
    centred = codes - codes.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    xy = centred @ vt[:2].T  # (N, 2): the first two principal components
    fig, ax = plt.subplots(figsize=(6, 5))
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=speakers, cmap="tab10", s=12)
    ax.legend(*sc.legend_elements(), title="speaker", fontsize=7, loc="best")
    ax.set_title("encode() of the test split, first two principal components")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "codes.png"), dpi=90)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=3000, help="training iterations in all")
    ap.add_argument("--batch_size", type=int, default=32, help="series per iteration")
    ap.add_argument("--layer_sizes", default="128,64", help="encoder widths, comma-separated")
    ap.add_argument("--keep_prob", type=float, default=0.9, help="dropout keep probability; 1 = none")
    ap.add_argument("--out_dir", default="out/vowels", help="model.zip, metrics.json and PNGs go here")
    ap.add_argument("--seed", type=int, default=0, help="weights, dropout and the validation draw")
    args = ap.parse_args(argv)
    if args.iterations < 1 or args.batch_size < 1:
        ap.error("--iterations and --batch_size must be positive")

    train, train_speakers = load("train")
    test, test_speakers = load("test")
    mean = np.concatenate(train).mean(0)
    std = np.concatenate(train).std(0)
    train = [(s - mean) / std for s in train]
    test = [(s - mean) / std for s in test]
    held_out = set(np.random.default_rng(args.seed).choice(len(train), 30, replace=False).tolist())
    fit = [s for i, s in enumerate(train) if i not in held_out]
    valid = [s for i, s in enumerate(train) if i in held_out]

    os.makedirs(args.out_dir, exist_ok=True)
    factory = NDS2SAEFactory()
    factory.set_output(os.path.join(args.out_dir, "model.zip"))
    factory.input_dim = factory.output_dim = 12
    factory.layer_sizes = [int(n) for n in args.layer_sizes.split(",")]
    factory.lrtype = "expdecay"
    factory.lrargs = dict(start_lr=0.005, finish_lr=0.0001, decay_steps=args.iterations)
    factory.keep_prob = None if args.keep_prob >= 1 else args.keep_prob
    factory.symmetric = True
    factory.seed = args.seed
    encoder = factory.build()
    started = time.time()
    encoder.train(make_generator(fit, args.seed), make_generator(valid, None),
                  n_iterations=args.iterations, batch_size=args.batch_size, display_step=250)
    train_seconds = time.time() - started

    lengths = [len(s) for s in test]
    recon = encoder.predict(test, lengths=lengths)
    mse = float(np.mean(np.concatenate([(r - s) ** 2 for r, s in zip(recon, test)])))
    baseline = float(np.mean(np.concatenate(test) ** 2))  # the training mean is 0 after scaling
    free = encoder.predict(test, max_len=60)
    length_acc = float(np.mean([len(p) == n for p, n in zip(free, lengths)]))
    length_within_1 = float(np.mean([abs(len(p) - n) <= 1 for p, n in zip(free, lengths)]))
    train_codes, test_codes = np.array(encoder.encode(train)), np.array(encoder.encode(test))
    accuracy = one_nn_accuracy(train_codes, train_speakers, test_codes, test_speakers)
    metrics = {
        "iterations": encoder.iteration, "train_seconds_this_run": round(train_seconds, 1),
        "layer_sizes": factory.layer_sizes, "keep_prob": factory.keep_prob,
        "test_mse_per_value": mse, "test_mse_channel_mean_baseline": baseline,
        "test_1nn_speaker_accuracy": accuracy, "test_length_exact": length_acc,
        "test_length_within_1": length_within_1, "code_size": int(test_codes.shape[1]),
    }
    with open(os.path.join(args.out_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
    plot(args.out_dir, test, recon, test_codes, test_speakers)
    print(json.dumps(metrics, indent=1))


if __name__ == "__main__":
    main()
