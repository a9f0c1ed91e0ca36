#!/usr/bin/env bash
# The whole test suite. Installs what the tests need from Debian when it is missing (Chromium for the
# browser tests, PostgreSQL server binaries for the database tests; the tests start their own server).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/system-deps.sh
export CHEXNET_HOME="${CHEXNET_HOME:-$(mktemp -d -t chexnet-test-XXXXXX)}"
# Two workers (pytest-xdist): the browser and worker tests spend much of their time waiting on other
# processes, so two keep both cores busy. TEST_WORKERS=0 runs everything in this one process.
exec .venv/bin/python -m pytest -n "${TEST_WORKERS:-2}" "$@"
