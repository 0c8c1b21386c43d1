# The README's two commands: `make demo` (train the digits demo with the live dashboard) and `make test`.
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

test: install services lint
	$(PY) -m pytest -q tests

bench: install
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

.PHONY: install services lint demo test bench
