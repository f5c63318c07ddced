# mysimbdp: `make run` starts the daemon with the example tenants, `make test` runs the suite.
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: setup run test lint bench reliability clean

setup:
	@bash scripts/setup.sh

run: setup
	$(BIN)/mysimbdpd --config-dir config

test: setup lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check mysimbdp tests plugins bench
	$(BIN)/mypy mysimbdp

bench: setup
	$(BIN)/python -m bench $(BENCH_ARGS)

reliability: setup
	$(BIN)/python -m pytest tests/reliability -m "slow or not slow" $(PYTEST_ARGS)

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
