# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?=

.PHONY: run test bench check-config clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: setup.cfg $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: setup.cfg $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/python -m scout_diff_cache serve $(if $(CONFIG),--config $(CONFIG))

check-config: $(VENV)/.installed
	$(BIN)/python -m scout_diff_cache check-config $(if $(CONFIG),--config $(CONFIG))

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(VENV)/.installed-test
	$(BIN)/python -m tests.benchmark $(BENCH_ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
