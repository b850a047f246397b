# The README's two commands. Each sets up what it needs in .venv (Python >= 3.10), then runs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test

demo: $(VENV)/.installed-base  ## the example worker and scheduler on the embedded SQLite broker
	$(BIN)/python -m examples.demo

# The unit tests run in this process (some of them fork, which must happen with no other thread running).
# The integration, chaos and browser tests start their own servers and worker processes and mostly wait on
# them, so they run in TEST_JOBS pytest processes (pytest-xdist), each with servers of its own.
TEST_JOBS ?= 4

test: $(VENV)/.installed-test  ## the whole suite (it starts its own Redis-compatible servers)
	$(BIN)/python -m pytest tests/unit
	$(BIN)/python -m pytest tests/integration tests/chaos -n $(TEST_JOBS)

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
