# Orderly: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# One stamp per set of extras: `make run` installs only the service, the tooling comes with the
# targets that use it. Each is redone when pyproject.toml changes, and only then.
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev
BENCH_STAMP := $(VENV)/.installed-bench
# The AI SDK's tests drive the real `ai` package from Node (tests/node, pinned by its lock file).
NODE_STAMP := tests/node/node_modules/.installed

.DEFAULT_GOAL := help
.PHONY: help run test test-citus soak lint format bench dist clean

# Where `make run` serves, from HOST and PORT as the environment (or the command line) sets
# them: `make help` says so, not a fixed :8000.
SERVE_URL = http://$(or $(HOST),127.0.0.1):$(or $(PORT),8000)

help: ## Show this help
	@awk -v url='$(SERVE_URL)' 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {gsub(/SERVE_URL/, url, $$2); printf "  \033[36m%-8s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(RUN_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e .
	@touch $@

# The dev extras include everything the service needs, so they satisfy `make run` too.
$(DEV_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@ $(RUN_STAMP)

$(BENCH_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	@touch $@ $(DEV_STAMP) $(RUN_STAMP)

$(NODE_STAMP): tests/node/package.json tests/node/package-lock.json
	@if command -v npm >/dev/null; then \
	  cd tests/node && npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.installed; \
	else \
	  echo "npm not found: tests/integration/test_ai_sdk.py is skipped (it fails under CI=true)"; \
	fi

run: $(RUN_STAMP) ## Start the service on SERVE_URL (installs only what it needs; embedded PostgreSQL unless DATABASE_URL is set)
	$(PY) -m server

test: $(DEV_STAMP) $(NODE_STAMP) ## Run the test suite (installs the dev extras and, with npm ci, the AI SDK tests' packages; embedded PostgreSQL, or TEST_DATABASE_URL); FAULT_SEED=N reruns a fault seed
	$(PY) -m pytest $(PYTEST_ARGS)

test-citus: $(DEV_STAMP) $(NODE_STAMP) ## The integration suite and one fault seed on a Citus cluster: CITUS_URL, or a local one made with ../shared/citus (docs/scaling.md)
	PY=$(PY) tests/citus.sh $(PYTEST_ARGS)

SOAK_SEEDS ?= 20
SOAK_SECONDS ?= 40
SOAK_REPORT := test-artifacts/soak.jsonl

soak: $(DEV_STAMP) ## Fault-injection soak: SOAK_SEEDS seeds (20) x SOAK_SECONDS of faults (40); SOAK_FIRST_SEED=N fixes the seeds; docs/reliability.md
	@mkdir -p test-artifacts && rm -f $(SOAK_REPORT)
	SOAK_SEEDS=$(SOAK_SEEDS) SOAK_FIRST_SEED=$(SOAK_FIRST_SEED) FAULT_SECONDS=$(SOAK_SECONDS) \
	  FAULT_REPORT=$(SOAK_REPORT) $(PY) -m pytest tests/faults/test_under_faults.py -q $(PYTEST_ARGS); \
	  status=$$?; $(PY) -m tests.faults.soak_report $(SOAK_REPORT); exit $$status

lint: $(DEV_STAMP) ## ruff format --check, ruff check, mypy --strict
	$(VENV)/bin/ruff format --check server tests bench
	$(VENV)/bin/ruff check server tests bench
	$(VENV)/bin/mypy --strict server bench

bench: $(BENCH_STAMP) ## Run the benchmarks (about 35 min with the Citus step, with the machine's PostgreSQL when it answers on :5432, and a Citus step with CITUS_URL or ../shared/citus; BENCH_ARGS=--quick for a few minutes, --only citus for that step); writes docs/benchmarks.md
	$(PY) -m bench $(BENCH_ARGS)

format: $(DEV_STAMP) ## Reformat the code and apply safe lint fixes
	$(VENV)/bin/ruff format server tests bench
	$(VENV)/bin/ruff check --fix server tests bench

# The wheel builds in an isolated environment of its own (pip fetches setuptools for it).
dist: | $(PY) ## Build the service's wheel into dist/ (with sql/ and static/ inside); .ci/wheel-check installs and serves it
	rm -rf dist build
	$(PY) -m pip wheel --quiet --no-deps --wheel-dir dist .
	@ls dist/*.whl

clean: ## Remove the virtualenv, caches and builds (keeps .data/, the embedded database)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache dist build tests/node/node_modules
