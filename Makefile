# QueryRec: the two commands of the README (`make demo`, `make test`) set everything up.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS ?= dev,train,export,serve,load

.PHONY: install demo test lint typecheck check bench-prepare loadtest soak clean

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

# Locust against the scoring service (loadtest/README.md). Without TARGET it stands up an
# embedded Redis with the demo's state and `queryrec serve` on the demo's bundle (make demo).
LOAD_RATE ?= 50
LOAD_DURATION ?= 20
LOAD_ARGS ?=
loadtest: install
	$(BIN)/python -m loadtest run --rate $(LOAD_RATE) --duration $(LOAD_DURATION) $(if $(TARGET),--target $(TARGET)) $(LOAD_ARGS)

# Ten minutes at SOAK_RATE (or the max_rate of SOAK_FROM, a bench result file): server
# RSS at start and end, Score p99 per minute; fails on any failed call.
SOAK_MINUTES ?= 10
soak: install
	$(BIN)/python -m loadtest soak --minutes $(SOAK_MINUTES) $(if $(SOAK_RATE),--rate $(SOAK_RATE)) $(if $(SOAK_FROM),--from-bench $(SOAK_FROM)) $(if $(TARGET),--target $(TARGET)) $(LOAD_ARGS)

clean:
	rm -rf $(VENV) demo-work bench-work .pytest_cache .mypy_cache .ruff_cache
