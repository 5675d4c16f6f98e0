# The one entry point for tooling. `make run` serves, `make test` tests; both set up .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint format typecheck bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("leasegate needs Python 3.11+") if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/leasegate serve $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check app tests bench
	$(BIN)/ruff format --check app tests bench
	$(BIN)/mypy app tests

format: $(STAMP)
	$(BIN)/ruff format app tests bench
	$(BIN)/ruff check --fix app tests bench

typecheck: $(STAMP)
	$(BIN)/mypy app tests

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	bash bench/ensure-wrk.sh
	$(BIN)/python -m bench.leases
	$(BIN)/python -m bench.service

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
