# The README's two commands: `make run` (install, then simulate a federation on the embedded
# default scenario) and `make test` (install with test tools, then run the whole suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
OUT    ?= results/default

.PHONY: run test lint types install install-dev os-packages bench clean

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

# OS packages the tests start for real, each installed with apt-get only when missing and only as
# root (CI) or through passwordless sudo; elsewhere the tests that need one skip and say why (the
# gateway tests fail instead when CI is set):
#   chromium    - tests/test_report.py loads the report in headless Chromium over the DevTools pipe
#   postgresql  - the OMOP reader's tests run a throwaway cluster of their own; the drop-in stops
#                 Debian's package from creating and starting a system-wide "main" cluster
#   nginx       - the Fleet gateway (`medalloc gateway`; tests/test_gateway.py, tests/e2e/), with its
#                 stream and njs modules (libnginx-mod-stream, libnginx-mod-stream-js: the TCP front's
#                 connections per address and its opt-in minimum upload rate, server/gateway_stream.py)
PG_DROPIN := /etc/postgresql-common/createcluster.d/medalloc-no-main-cluster.conf
os-packages:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || missing="$$missing nginx"; \
	test -f /usr/lib/nginx/modules/ngx_stream_js_module.so || missing="$$missing libnginx-mod-stream libnginx-mod-stream-js"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=""; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	else echo "os-packages:$$missing not installed and no root: the tests that need them will skip"; exit 0; fi; \
	$$SUDO mkdir -p $(dir $(PG_DROPIN)) && echo "create_main_cluster = false" | $$SUDO tee $(PG_DROPIN) >/dev/null; \
	$$SUDO apt-get update -qq && \
	$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null

# lint and types first (seconds), then the suite in 4 workers on the 2 cores: the real-process tests mostly wait
# (process starts, Flower's pulls, heartbeats, round timeouts), and the short tests fill those waits. Measured one
# after the other in one worktree on the shared machine: -n 2 1851 s (0.83 of a core busy on average, load 2-9),
# -n 4 1493 s (1.10, load 2-14, more than -n 2 had), every test passing in both; again at -n 4, load 1-7: 1036 s
# (1.43; one failure there, test_run_report keeping the start on the release noise, fixed since). --dist worksteal
# with each worker's longest modules first (tests/conftest.py says why); --durations=30
# puts the slowest tests in the log
test: install-dev os-packages lint
	$(BIN)/python -m pytest -n 4 --dist worksteal --durations=30

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
	ln -s $(CURDIR)/fuzz $(TYPES_TREE)/fuzz
	cd $(TYPES_TREE) && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml --cache-dir .mypy_cache \
		-p medalloc -p medalloc_core -p fuzz

clean:
	rm -rf $(VENV) results .pytest_cache
