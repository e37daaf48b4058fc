"""Shared by the tests that drive the scripts through their command lines."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_command(cmd, check=True, env=None, timeout=600):
    """Run `cmd` in the repository root; with check, fail the test showing its output."""
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout, env=env)
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
    import numpy as np

    step = model.compile_train("adam", 1.0)
    return [float(step(src, tgt, np.float32(lr))[0]) for _ in range(steps)], step
