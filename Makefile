# Every target bootstraps what it needs, so a fresh clone needs only `make run` or
# `make test`. With no DATABASE_URL, a private PostgreSQL is started under .data/
# (controlplane/devdb.py).

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# Touched after a successful install: the venv is rebuilt only when pyproject.toml changes.
STAMP := $(VENV)/.installed

export PIP_DISABLE_PIP_VERSION_CHECK := 1

.DEFAULT_GOAL := help
.PHONY: help venv run test test-tools lint fmt db-stop clean

help:
	@echo "make run      web server on http://127.0.0.1:8000 and two scheduler nodes"
	@echo "make test     ruff check, then the test suite (PYTEST_ARGS='-k name' to narrow)"
	@echo "make lint     ruff check and ruff format --check"
	@echo "make fmt      ruff fixes and formatting"
	@echo "make db-stop  stop the private PostgreSQL under .data/"
	@echo "make clean    stop it, remove .venv, .data (the private database) and caches"

venv: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { \
	  echo "$(PYTHON) not found: install Python 3.11, or make PYTHON=/path/to/python3.11" >&2; \
	  exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev,prod]'
	@touch $@

run: venv
	$(BIN)/python -m controlplane.devrun

test: venv test-tools
	$(BIN)/ruff check .
	PRIVATE_PG_FAST=1 SCHEDULER_DEMO_TARGETS=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

# Debian packages the tests need: faketime (clock-skew tests), chromium (browser tests,
# driven by Playwright through executable_path; no browser is ever downloaded) and
# prometheus for promtool (checks the scraped metrics and monitoring/alerts.yml).
TEST_PACKAGES := faketime:faketime chromium:chromium promtool:prometheus

test-tools:
	@missing=""; for pair in $(TEST_PACKAGES); do \
	  command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair##*:}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "Installing$$missing (apt-get) for the tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq$$missing >/dev/null; \
	  else \
	    echo "warning: missing$$missing and not root; the tests need them" \
	         "(sudo apt-get install$$missing)" >&2; \
	  fi; \
	fi

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# devdb's stop needs only the standard library, so it works without the venv too.
db-stop:
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m controlplane.devdb stop; \
	else $(PYTHON) -m controlplane.devdb stop; fi

clean: db-stop
	rm -rf $(VENV) .data staticfiles artifacts build *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
