# The project's vocabulary. `make demo` and `make test` work on a fresh clone:
# each creates the virtualenv and installs what it needs by itself.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DOCPIPE := $(BIN)/docpipe

.DEFAULT_GOAL := help
.PHONY: help venv demo test unit integration lint fmt scenarios load bench workers stop-workers flower clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)  ## create .venv and install docpipe with its dev tools

demo: $(STAMP)  ## run the pipeline on the sample documents (embedded default: no Redis, no cloud)
	$(DOCPIPE) run samples/

test: lint $(STAMP)  ## lint, then unit and integration tests
	$(BIN)/pytest -q tests -m 'not load'

unit: $(STAMP)  ## unit tests only (no services needed)
	$(BIN)/pytest -q tests/unit

integration: $(STAMP)  ## integration tests (private redis-server, throw-away PostgreSQL database)
	$(BIN)/pytest -q tests/integration -m integration

lint: $(STAMP)  ## ruff check, ruff format --check, mypy
	$(BIN)/ruff check pipeline fakes tests
	$(BIN)/ruff format --check pipeline fakes tests
	$(BIN)/mypy

fmt: $(STAMP)  ## format and auto-fix
	$(BIN)/ruff format pipeline fakes tests
	$(BIN)/ruff check --fix pipeline fakes tests

bench: $(STAMP)  ## pytest-benchmark for the CPU-bound stages
	$(BIN)/pytest -q tests/unit -k bench --benchmark-enable --benchmark-only

clean:  ## remove the virtualenv and local state
	rm -rf $(VENV) .docpipe .pytest_cache .mypy_cache .ruff_cache
