"""What the tests share (test modules never import from each other): running the scripts,
a tiny prepared dataset, a tiny model config and batch, and cells of a user's kind."""
import json
import os
import subprocess
import sys

import numpy as np

import cells
import pytensor.tensor as pt
from model import ModelConfig
from vocab import BOS_ID, EOS_ID, PAD_ID

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# Settings of a tiny training run: a step takes milliseconds.
TINY_TRAIN = ["--embed_size=8", "--hidden_size=16", "--batch_size=8", "--eval_exact_match=20",
              "--num_samples=2", "--max_decode_len=10", "--max_minutes=0", "--log_interval=1"]


def user_env():
    """The environment a user's shell gives the scripts: without the PYTENSOR_FLAGS this test
    process set (flags.py), so that each script must set its own."""
    return {k: v for k, v in os.environ.items() if k != "PYTENSOR_FLAGS"}


def run_script(script, *args, stdin=None, check=True):
    """Run one of the project's scripts with `args`; with check, fail the test showing its output."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, args)],
                          input=stdin, capture_output=True, text=True, cwd=ROOT, timeout=600, env=user_env())
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def run_command(cmd, check=True, env=None, timeout=600):
    """Run `cmd` in the repository root; with check, fail the test showing its output."""
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout, env=env if env is not None else user_env())
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def log_rows(out_dir):
    with open(os.path.join(out_dir, "log.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def prepare_tiny_reverse(folder):
    """A 200-pair reverse task, small enough for a training step in milliseconds."""
    run_command([sys.executable, os.path.join(ROOT, "data", "reverse", "prepare.py"), "--out_dir", folder,
                 "--n_train", 200, "--n_heldout", 20, "--max_len", 6])
    return str(folder)


def losses_of_training(model, src, tgt, steps=15, lr=0.02):
    """The losses of `steps` Adam steps (clipped at 1) on one batch, and the compiled step:
    a model that learns lowers them."""
    step = model.compile_train("adam", 1.0)
    return [float(step(src, tgt, np.float32(lr))[0]) for _ in range(steps)], step


def write_pairs_tsv(folder, n=200, seed=0):
    """A tab-separated file of n English-Spanish toy pairs in `folder`; returns its path."""
    words = {"god": "dios", "light": "luz", "water": "agua", "earth": "tierra", "day": "dia"}
    rng = np.random.default_rng(seed)
    path = os.path.join(folder, f"pairs{seed}.tsv")
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n):
            s = list(rng.choice(list(words), rng.integers(2, 6)))
            f.write(" ".join(s) + "\t" + " ".join(words[w] for w in s) + "\n")
    return path


def randomize(module, seed):
    """Non-trivial values for every param (biases included), so each term is exercised."""
    rng = np.random.default_rng(seed)
    for p in module.params:
        p.set_value(rng.normal(0, 0.5, p.get_value().shape).astype("float32"))


def values(module):
    """Each param's current value, in module.params' order."""
    return [p.get_value() for p in module.params]


class HalfGRU(cells.GRU):
    """A GRU subclass that changes `recur`: the stock kernel must step aside for it."""

    def recur(self, x_t, h_prev):
        return 0.5 * super().recur(x_t, h_prev)


class LeakyLSTM(cells.LSTM):
    """An LSTM subclass that changes `recur` (and so both of its states)."""

    def recur(self, x_t, h_prev, c_prev):
        h, c = super().recur(x_t, h_prev, c_prev)
        return [0.9 * h + 0.1 * h_prev, c * 0.8]


@cells.register_cell("test_mgu")
class UserMGU(cells.Recurrent):
    """A user's cell defined in a test file, written only as `recur` (Zhou et al. 2016)."""

    n_gates = 2

    def recur(self, x_t, h_prev):
        f = pt.sigmoid(x_t[:, : self.hiddenSize] + pt.dot(h_prev, self.U[:, : self.hiddenSize]))
        h_tilde = pt.tanh(x_t[:, self.hiddenSize :] + pt.dot(f * h_prev, self.U[:, self.hiddenSize :]))
        return (1.0 - f) * h_prev + f * h_tilde


V = 11


def tiny_config(**kw):
    """A ModelConfig small enough to compile and train in seconds."""
    return ModelConfig(src_vocab_size=V, tgt_vocab_size=V, embed_size=6, hidden_size=8, **kw)


def batch(seed, B=4):
    """(src (5, B), tgt (6, B)) int32 with padding in the first two columns and an early EOS."""
    rng = np.random.default_rng(seed)
    src = rng.integers(EOS_ID + 1, V, size=(5, B)).astype("int32")
    src[3:, 0] = PAD_ID
    tgt = rng.integers(EOS_ID + 1, V, size=(6, B)).astype("int32")
    tgt[0], tgt[4:, 1] = BOS_ID, PAD_ID
    tgt[3, 1] = EOS_ID
    return src, tgt
