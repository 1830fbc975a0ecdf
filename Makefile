# TradePulse — the two promises: `make run` and `make test` set up everything they need.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ASSETS_STAMP := src/tradepulse/api/static/vendor/.installed
PYTEST_ARGS ?=

.PHONY: setup assets browser run test test-quick lint bench soak stack-up stack-down up clean

setup: $(STAMP)

# Re-install only when the dependency lock or the package metadata changed.
$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip uv
	@$(BIN)/uv pip install -q --python $(BIN)/python -r requirements.lock
	@$(BIN)/uv pip install -q --python $(BIN)/python --no-deps -e .
	@touch $(STAMP)
	@echo "setup: .venv ready"

assets: $(ASSETS_STAMP)

$(ASSETS_STAMP): frontend/package.json frontend/package-lock.json scripts/build_assets.sh
	@bash scripts/build_assets.sh

browser:
	@bash scripts/install_browser.sh

run: setup assets
	$(BIN)/tradepulse run

test: setup assets browser
	@bash scripts/test.sh $(PYTEST_ARGS)

test-quick: setup
	$(BIN)/pytest -m "unit" -q $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy
	@# --no-deps --disable-pip: audit the lock's pins as they are; pip's resolver would refuse
	@# the caps pyproject.toml overrides for uv ([tool.uv] override-dependencies).
	$(BIN)/pip-audit -r requirements.lock --no-deps --disable-pip --progress-spinner off

# The full set: the market-open run on each backend (each about 15 minutes), peers included.
# The cluster run needs the engines: `stack up` starts what is not running (stop: make stack-down).
bench: setup
	$(BIN)/tradepulse bench --out docs/benchmarks/market-open-full
	$(BIN)/tradepulse stack up
	$(BIN)/tradepulse bench --backend cluster --out docs/benchmarks/cluster

soak: setup
	TRADEPULSE_SOAK=1 $(BIN)/pytest -m fault -q

stack-up: setup
	$(BIN)/tradepulse stack up

stack-down: setup
	$(BIN)/tradepulse stack down

up:
	docker compose -f deploy/docker-compose.yml up

clean:
	rm -rf $(VENV) src/tradepulse/api/static/vendor frontend/node_modules .pytest_cache .mypy_cache .ruff_cache
