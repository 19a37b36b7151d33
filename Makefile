# toolcrib: `make run` and `make test` do all the set-up on a fresh machine.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= toolcrib/demo/toolcrib.toml
NODE_DIR := .tools/node

.PHONY: install run test lint typecheck pytest conformance load bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[demo,dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/toolcrib serve --config $(CONFIG)

lint: $(STAMP)
	$(BIN)/ruff format --check toolcrib tests benchmarks
	$(BIN)/ruff check toolcrib tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -q

test: lint typecheck pytest

clean:
	rm -rf $(VENV) .tools .toolcrib
