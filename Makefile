# The README's two commands: `make demo` (train the digits demo with the live dashboard) and `make test`.
# `make check` is the quick one for contributors: lint and the tests of pure logic, no root, no apt, no browser.
VENV ?= .venv
PY = $(VENV)/bin/python

$(VENV)/.installed: settings.ini setup.py
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/fastwatch demo

services:
	bash .ci/services

lint: install
	$(VENV)/bin/ruff check fastwatch tests benchmarks
	$(VENV)/bin/lint-imports

check: lint
	$(PY) -m pytest -q tests/logic

test: install services lint
	$(PY) -m pytest -q tests

# The dashboard page's script, rebuilt from its sources (fastwatch/view/app/page/) with npm, in a copy of them so that
# node_modules stays out of the package; the result is checked in (tests/test_page.py checks it is what they build).
page:
	rm -rf .page-build && cp -r fastwatch/view/app/page .page-build
	cd .page-build && npm ci --no-audit --no-fund && node build.mjs ../fastwatch/view/app/static

bench: install
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

.PHONY: install services lint check demo test bench page
