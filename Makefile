# The README's two commands: `make run` (install, then simulate a federation on the embedded
# default scenario) and `make test` (install with test tools, then run the whole suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
OUT    ?= results/default

.PHONY: run test lint types install install-dev browser bench clean

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

# The report's tests load the page in a real headless Chromium from Debian's packages (driven over
# the DevTools pipe: no driver, nothing downloaded by the tests). Installed here when missing and
# running as root (CI); elsewhere the browser tests skip and say why.
browser:
	@if ! command -v chromium >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
		else \
			echo "chromium is not installed and this is not root: the browser tests will be skipped"; \
		fi; \
	fi

# lint and types first (seconds), then the suite on both cores
test: install-dev browser lint
	$(BIN)/python -m pytest -n 2

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(MAKE) --no-print-directory types

# mypy checks the package under its installed names (medalloc.client, medalloc.server, ...), so
# calls from the simulations and the CLI into the apps are checked too: the editable install's
# import hook is invisible to mypy, hence a tree of links that spells the namespace out.
TYPES_TREE := build/typecheck
types: install-dev
	rm -rf $(TYPES_TREE) && mkdir -p $(TYPES_TREE)/medalloc
	for f in medalloc/*; do ln -s $(CURDIR)/$$f $(TYPES_TREE)/medalloc/; done
	for d in client server simulations; do ln -s $(CURDIR)/$$d $(TYPES_TREE)/medalloc/$$d; done
	ln -s $(CURDIR)/medalloc_core $(TYPES_TREE)/medalloc_core
	cd $(TYPES_TREE) && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml --cache-dir .mypy_cache \
		-p medalloc -p medalloc_core

clean:
	rm -rf $(VENV) results .pytest_cache
