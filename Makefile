# Two commands do all set-up: `make up` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: up test bench bench-peer bench-scale bench-cron proto lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

up: $(STAMP)
	$(BIN)/lamina up

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/warm_and_cold.py

bench-scale: $(STAMP)
	$(BIN)/python bench/autoscale.py
	$(BIN)/python bench/keepalive_traces.py

bench-cron: $(STAMP)
	$(BIN)/python bench/cron_lag.py

bench-peer: $(STAMP)
	cd bench/peer && npm install --no-audit --no-fund --silent
	$(BIN)/python bench/peer.py

proto: $(STAMP)
	$(BIN)/python proto/generate.py lamina/rpc

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) .pytest_cache
