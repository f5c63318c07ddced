# mysimbdp: `make run` starts the daemon with the example tenants, `make test` runs the suite.
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: setup test-setup run test lint bench reliability clean

setup:
	@bash scripts/setup.sh

# the tools only the tests use (promtool), from Debian's packages
test-setup:
	@MYSIMBDP_SETUP_TEST_TOOLS=1 bash scripts/setup.sh

run: setup
	@$(BIN)/python -c "from mysimbdp.config import load_settings; from mysimbdp.cli.admin import daemon_url; \
	print('mysimbdp console:', daemon_url(load_settings('config')) + '/console', \
	      '(sign in with a tenant token, or MYSIMBDP_ADMIN_TOKEN)')"
	$(BIN)/mysimbdpd --config-dir config

test: test-setup lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check mysimbdp tests plugins bench
	$(BIN)/mypy mysimbdp

bench: setup
	$(BIN)/python -m bench $(BENCH_ARGS)

reliability: setup
	MYSIMBDP_RELIABILITY=full MYSIMBDP_RELIABILITY_RESULTS=tests/reliability/results.json \
		$(BIN)/python -m pytest tests/reliability tests/test_fuzz_readers.py tests/test_fuzz_decoder.py \
		$(PYTEST_ARGS); status=$$?; \
		$(BIN)/python tests/reliability/report.py tests/reliability/results.json docs/reliability.md \
		&& exit $$status

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
