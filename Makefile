# `make test` and `make demo` are all a new checkout needs; both run scripts/setup.sh first.
VENV := .venv
BIN := $(VENV)/bin
LINT_PATHS := $(wildcard src tests bench)

.PHONY: setup lint typecheck test demo clean

setup:
	@scripts/setup.sh

lint: setup
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/mypy

typecheck: setup
	$(BIN)/mypy

test: setup
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/mypy
	$(BIN)/pytest -q

demo: setup
	$(BIN)/headway demo

clean:
	rm -rf state .pytest_cache .mypy_cache .ruff_cache
