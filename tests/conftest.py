import os
import sys

import pytest

# Tests import the project's top-level modules (model, layers, cells, ...).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# The project's PyTensor flags (float32, the compile cache) before any test module imports pytensor.
import flags  # noqa: E402,F401


@pytest.fixture(scope="session")
def tiny_reverse(tmp_path_factory):
    """A prepared 200-pair reverse task, shared by every test that runs train.py on it."""
    from helpers import prepare_tiny_reverse

    return prepare_tiny_reverse(tmp_path_factory.mktemp("reverse_tiny"))


@pytest.fixture(scope="session")
def smoke_run(tiny_reverse, tmp_path_factory):
    """(run folder, process) of a 4-step train.py run on the tiny reverse task, shared by the
    tests of train.py, sample.py and evaluate.py that read a finished run."""
    from helpers import TINY_TRAIN, run_script

    out = tmp_path_factory.mktemp("run")
    proc = run_script("train.py", f"--dataset={tiny_reverse}", f"--out_dir={out}", "--max_iters=4",
                      "--eval_interval=2", *TINY_TRAIN)
    return out, proc
