# Two commands do all set-up on a fresh machine: `make run` serves the app, `make test` runs the suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed

.PHONY: setup run test lint bench clean-var lock

# Installs exactly the locked files: every wheel's sha256 is checked (--require-hashes), pip included.
$(STAMP): requirements.txt requirements.lock requirements-pip.lock
	@grep -q "$$(sha256sum requirements.txt | cut -c1-64)" requirements.lock || \
	  { echo "requirements.lock does not match requirements.txt: run ./scripts/lock-requirements.sh" >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes -r requirements-pip.lock
	$(PY) -m pip install --quiet --require-hashes -r requirements.lock
	touch $(STAMP)

setup: $(STAMP)

# After changing requirements.txt: re-resolve the pins and record their hashes.
lock:
	./scripts/lock-requirements.sh

run: setup
	./scripts/run.sh

test: setup
	./scripts/test.sh

lint: setup
	$(PY) -m ruff check core db jobs webapp tests

bench: setup
	$(PY) -m core bench inference --json
	$(PY) -m core bench loader --json
	$(PY) -m core bench train --json
