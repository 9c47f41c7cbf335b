# Two commands on a fresh machine: `make run` and `make test`. Both set up .venv themselves.
.DEFAULT_GOAL := help
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.nobusy-installed

.PHONY: help setup run test lint typecheck pytest bench clean

help:
	@echo "make run    set up .venv and serve the embedded model at http://127.0.0.1:8000/v1"
	@echo "make test   set up .venv (with dev tools) and run ruff, mypy and pytest"
	@echo "make bench  run the benchmarks and publish docs/benchmarks.md"

$(STAMP): pyproject.toml scripts/setup.sh
	@bash scripts/setup.sh
	@touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/nobusy serve

lint: $(STAMP)
	@echo "==> ruff"
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	@echo "==> mypy --strict"
	$(BIN)/mypy

pytest: $(STAMP)
	@bash scripts/install-chromium.sh
	@bash scripts/install-redis.sh
	@echo "==> pytest"
	$(BIN)/pytest

test: lint typecheck pytest

# BENCH_ARGS: e.g. `make bench BENCH_ARGS=--quick` (a ~4 minute smoke run) or
# `make bench BENCH_ARGS="--only overhead,memory"`.
BENCH_ARGS ?=
bench: $(STAMP)
	@echo "==> installing the bench extra (matplotlib)"
	$(BIN)/pip install -q -e ".[bench]"
	@bash scripts/install-redis.sh
	@bash scripts/install-lb.sh
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .mypy_cache .ruff_cache .pytest_cache
