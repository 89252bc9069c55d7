# Orderly: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help run test lint format bench clean

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-8s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP) ## Start the service on http://127.0.0.1:8000 (embedded PostgreSQL unless DATABASE_URL is set)
	$(PY) -m server

test: $(STAMP) ## Run the test suite (embedded PostgreSQL, or TEST_DATABASE_URL)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP) ## ruff format --check, ruff check, mypy --strict
	$(VENV)/bin/ruff format --check server tests bench
	$(VENV)/bin/ruff check server tests bench
	$(VENV)/bin/mypy --strict server

BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	@touch $(BENCH_STAMP)

bench: $(BENCH_STAMP) ## Run the benchmarks (under 20 min, with the machine's PostgreSQL when it answers on :5432; BENCH_ARGS=--quick for a few minutes); writes docs/benchmarks.md
	$(PY) -m bench $(BENCH_ARGS)

format: $(STAMP) ## Reformat the code and apply safe lint fixes
	$(VENV)/bin/ruff format server tests bench
	$(VENV)/bin/ruff check --fix server tests bench

clean: ## Remove the virtualenv and caches (keeps .data/, the embedded database)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
