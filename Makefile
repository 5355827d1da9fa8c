# The README's two commands: `make run` (install, then simulate a federation on the embedded
# default scenario) and `make test` (install with test tools, then run the whole suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
OUT    ?= results/default

.PHONY: run test lint install install-dev bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

run: install
	$(BIN)/medalloc simulate --out $(OUT)

# lint and types first (seconds), then the suite on both cores
test: install-dev lint
	$(BIN)/python -m pytest -n 2

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) results .pytest_cache
