# The README's two commands: `make run` (install, then simulate a federation on the embedded
# default scenario) and `make test` (install with test tools, then run the whole suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
OUT    ?= results/default

.PHONY: run test lint types install install-dev browser os-packages nginx bench clean

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
test: install-dev browser os-packages nginx lint
	$(BIN)/python -m pytest -n 2

# OS packages the tests start for real: PostgreSQL's server binaries (the OMOP reader's tests run a
# throwaway cluster of their own). Installed with apt-get where missing and we are root (CI) or have
# sudo; otherwise the tests that need them skip and say why. The drop-in stops Debian's package
# from creating and starting a system-wide "main" cluster: the tests start and stop their own.
OS_PACKAGES := postgresql
PG_DROPIN := /etc/postgresql-common/createcluster.d/medalloc-no-main-cluster.conf
os-packages:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; then :; \
	else \
		if [ "$$(id -u)" = 0 ]; then SUDO=""; \
		elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo"; \
		else echo "os-packages: $(OS_PACKAGES) not installed and no root: the PostgreSQL tests will skip"; exit 0; fi; \
		$$SUDO mkdir -p $(dir $(PG_DROPIN)) && echo "create_main_cluster = false" | $$SUDO tee $(PG_DROPIN) >/dev/null; \
		$$SUDO apt-get update -qq && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(OS_PACKAGES); \
	fi

# nginx, the Fleet gateway (`medalloc gateway`; tests/test_gateway.py and tests/e2e/): installed with
# apt-get when missing (as root, as in CI, or through passwordless sudo), skipped when present. The
# gateway tests need it: without it they fail in CI (CI set) and skip elsewhere, saying why.
APT_GET = DEBIAN_FRONTEND=noninteractive apt-get
nginx:
	@if command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx; then :; \
	elif [ "$$(id -u)" = 0 ]; then $(APT_GET) update -qq && $(APT_GET) install -y -qq nginx; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
		sudo -n $(APT_GET) update -qq && sudo -n $(APT_GET) install -y -qq nginx; \
	else echo "nginx: not installed and no root: the gateway tests will skip (fail under CI)"; fi

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
