# The README's two commands. Each sets up what it needs in .venv (Python >= 3.10), then runs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test

demo: $(VENV)/.installed-base  ## the example worker and scheduler on the embedded SQLite broker
	$(BIN)/python -m examples.demo

test: $(VENV)/.installed-test  ## the whole suite (it starts its own Redis-compatible server)
	$(BIN)/python -m pytest

$(VENV)/.installed-base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@ $(VENV)/.installed-base
