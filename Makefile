# QueryRec: the two commands of the README (`make demo`, `make test`) set everything up.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS ?= dev,train,export,serve

.PHONY: install demo test lint typecheck check bench-prepare clean

install: $(STAMP)

# Re-install when the project's dependency list changes.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	@touch $@

demo: install
	$(BIN)/queryrec demo --workdir demo-work

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

check: lint typecheck test

# Benchmark of `data prepare` at the real KuaiSAR-small scale (see docs/BENCHMARKS.md).
bench-prepare: install
	$(BIN)/python benchmarks/prepare_kuaisar_small.py

clean:
	rm -rf $(VENV) demo-work bench-work .pytest_cache .mypy_cache .ruff_cache
