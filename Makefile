# One place for every check. `make dev` starts the system; `make test` runs the suite.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NODE_DEPS := tests/contract/node_modules/.package-lock.json

.PHONY: install dev test lint format typecheck docs check bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

$(NODE_DEPS): tests/contract/package-lock.json
	cd tests/contract && npm ci --ignore-scripts --no-audit --no-fund

install: $(STAMP)

# The API's port: `make dev PORT=8123`; Flower beside the rest: `make dev FLOWER=1`.
PORT ?= 8000
FLOWER ?=

dev: $(STAMP)
	$(VENV)/bin/runs dev --port $(PORT)$(if $(FLOWER), --flower)

test: $(STAMP) $(NODE_DEPS)
	$(VENV)/bin/pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check runs workers tests benchmarks
	$(VENV)/bin/ruff format --check runs workers tests benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff check --fix runs workers tests benchmarks
	$(VENV)/bin/ruff format runs workers tests benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# The documentation site (docs/): a broken link or page fails the build.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -f docs/mkdocs.yml

check: lint typecheck test docs

bench: $(STAMP)
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) benchmarks/throughput.py

clean:
	rm -rf $(VENV) .runs .site .pytest_cache .mypy_cache .ruff_cache tests/contract/node_modules
