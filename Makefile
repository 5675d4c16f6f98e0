# The one entry point for tooling. `make run` serves, `make test` tests; both set up .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint format typecheck bench clean chromium

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("leasegate needs Python 3.11+") if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/leasegate serve $(ARGS)

test: $(STAMP) chromium
	$(BIN)/python -m pytest $(ARGS)

# The console's browser test drives Debian's chromium (never a downloaded browser). Installed
# here when missing, apt-get exists and we are root; otherwise that one test is skipped.
chromium:
	@if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing chromium for the console's browser test"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 \
		|| (apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1) \
		|| echo "chromium could not be installed: the console's browser test will be skipped"; \
	fi

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
	$(BIN)/python -m bench.capacity

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
