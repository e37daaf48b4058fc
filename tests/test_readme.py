"""Every code block of the README runs as written: each ```python block in a fresh process,
and the ```diff edit of initModules() applied to a copy of model.py, which then builds and
trains a model with the new cell in every slot."""
import importlib.util
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from helpers import ROOT

README = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)
DIFF_BLOCKS = re.findall(r"```diff\n(.*?)```", README, re.S)


def test_the_readme_has_the_blocks_it_promises():
    assert len(PYTHON_BLOCKS) >= 3 and len(DIFF_BLOCKS) == 1


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_python_block_runs_as_written(index, tmp_path):
    """In a folder of its own (with the repository's data/ beside it), as a user running it
    from the repository would."""
    os.symlink(os.path.join(ROOT, "data"), tmp_path / "data")
    (tmp_path / "snippet.py").write_text(PYTHON_BLOCKS[index], encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "snippet.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"README block {index}:\n{PYTHON_BLOCKS[index]}\n{proc.stderr[-3000:]}"


def test_the_initModules_edit_puts_the_cell_in_every_slot(tmp_path):
    source = open(os.path.join(ROOT, "model.py"), encoding="utf-8").read()
    added_imports = []
    lines = [line for line in DIFF_BLOCKS[0].splitlines() if line.strip() and line.strip() != "..."]
    for k, line in enumerate(lines):
        if line.startswith("-"):
            old, new = line[1:], lines[k + 1][1:]
            assert old in source, f"the README's diff removes a line model.py does not have: {old!r}"
            source = source.replace(old, new)
        elif line.startswith("+") and (k == 0 or not lines[k - 1].startswith("-")):
            added_imports.append(line[1:])
    source = "\n".join(added_imports) + "\n" + source
    path = tmp_path / "model_edited.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("model_edited", path)
    edited = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(edited)

    from benchmarks.mgu import MGU
    import cells

    model = edited.Model(edited.ModelConfig(src_vocab_size=11, tgt_vocab_size=11, embed_size=6, hidden_size=8,
                                            bidirectional=True, attention="bahdanau"))
    slots = [getattr(m, "cell", m) for m in model.modules.values() if isinstance(getattr(m, "cell", m), cells.Recurrent)]
    assert len(slots) == 3 and all(type(c) is MGU for c in slots)
    src = np.array([[4, 5], [6, 7], [8, 0]], dtype="int32")
    tgt = np.array([[2, 2], [5, 6], [3, 3]], dtype="int32")
    loss = model.compile_train("adam", 1.0)(src, tgt, np.float32(0.01))[0]
    assert np.isfinite(loss)


def test_pyproject_lists_every_module_and_the_pinned_requirements():
    """`pip install -e .` installs every top-level module and requirements.txt's runtime pins."""
    import glob
    import tomllib

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)
    modules = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "*.py")))
    assert sorted(project["tool"]["setuptools"]["py-modules"]) == modules
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        pins = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    runtime = pins[: pins.index("pytest==9.2.0")]
    assert project["project"]["dependencies"] == runtime
    assert project["project"]["optional-dependencies"]["test"] == pins[len(runtime):]
