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

bench: install
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

.PHONY: install services lint check demo test bench
