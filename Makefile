# Two commands: `make train` (install, prepare KJV, train the default model, sample) and
# `make test`. Each creates .venv when it is missing.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
# The compile mode of `make train`: CVM (PyTensor's C backend, the default) or JAX (installs
# requirements-jax.txt first; README, Training on a GPU).
MODE   ?= CVM

.PHONY: train test sample vowels clean

$(VENV)/.installed: requirements.txt requirements-mpi.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-mpi.txt
	touch $@

# JAX is optional for training; the tests of the JAX path need it.
$(VENV)/.installed-jax: requirements-jax.txt $(VENV)/.installed
	$(PY) -m pip install --quiet -r requirements-jax.txt
	touch $@

data/kjv/meta.json: data/kjv/prepare.py $(VENV)/.installed
	$(PY) data/kjv/prepare.py

# The default run (700 steps, a few minutes), started afresh each time: it replaces out/kjv.
train: $(VENV)/.installed data/kjv/meta.json $(if $(filter JAX,$(MODE)),$(VENV)/.installed-jax)
	$(PY) train.py --overwrite=true --mode=$(MODE)
	$(PY) sample.py --start="And Abram departed, as the LORD had spoken unto him." --mode=$(MODE)
	$(PY) sample.py --start="the house is on fire" --mode=$(MODE)

# The sequence autoencoder on JapaneseVowels: figures in out/vowels/metrics.json and PNGs.
vowels: $(VENV)/.installed
	$(PY) data/japanese_vowels/prepare.py
	$(PY) data/japanese_vowels/autoencode.py

sample: $(VENV)/.installed
	$(PY) sample.py

# TensorBoard's writer is optional too; the tests of --tensorboard need it.
$(VENV)/.installed-tensorboard: requirements-tensorboard.txt $(VENV)/.installed
	$(PY) -m pip install --quiet -r requirements-tensorboard.txt
	touch $@

test: $(VENV)/.installed $(VENV)/.installed-jax $(VENV)/.installed-tensorboard
	$(PY) -m pytest -q -n 2 tests

clean:
	rm -rf out .pytensor_cache .pytest_cache
