# Two commands do all set-up on a fresh machine: `make run` serves the app, `make test` runs the suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed

.PHONY: setup run test lint bench clean-var

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

setup: $(STAMP)

run: setup
	./scripts/run.sh

test: setup
	./scripts/test.sh

lint: setup
	$(PY) -m ruff check core db webapp tests

bench: setup
	$(PY) -m core bench inference --json
	$(PY) -m core bench loader --json
	$(PY) -m core bench train --json
