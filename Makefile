# Two commands: `make train` (install, prepare KJV, train the default model, sample) and
# `make test`. Each creates .venv when it is missing.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python

.PHONY: train test sample vowels clean

$(VENV)/.installed: requirements.txt requirements-mpi.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-mpi.txt
	touch $@

data/kjv/meta.json: data/kjv/prepare.py $(VENV)/.installed
	$(PY) data/kjv/prepare.py

# The default run (700 steps, a few minutes), started afresh each time: it replaces out/kjv.
train: $(VENV)/.installed data/kjv/meta.json
	$(PY) train.py --overwrite=true
	$(PY) sample.py --start="And Abram departed, as the LORD had spoken unto him."
	$(PY) sample.py --start="the house is on fire"

# The sequence autoencoder on JapaneseVowels: figures in out/vowels/metrics.json and PNGs.
vowels: $(VENV)/.installed
	$(PY) data/japanese_vowels/prepare.py
	$(PY) data/japanese_vowels/autoencode.py

sample: $(VENV)/.installed
	$(PY) sample.py

test: $(VENV)/.installed
	$(PY) -m pytest -q -n 2 tests

clean:
	rm -rf out .pytensor_cache .pytest_cache
