#!/usr/bin/env bash
# The whole test suite. Installs what the tests need from Debian when it is missing (Chromium for the
# browser tests, PostgreSQL server binaries for the database tests; the tests start their own server).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/system-deps.sh
export CHEXNET_HOME="${CHEXNET_HOME:-$(mktemp -d -t chexnet-test-XXXXXX)}"
exec .venv/bin/python -m pytest "$@"
