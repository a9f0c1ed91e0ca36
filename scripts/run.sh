#!/usr/bin/env bash
# Serve CheXNet Studio on http://localhost:8501, with a training worker beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
export CHEXNET_HOME="${CHEXNET_HOME:-$PWD/var}"
mkdir -p "$CHEXNET_HOME"
# Migrate the database and create the first admin (its password is printed here, once).
"$PY" -m db init-admin
worker_pid=""
if [ -f db/worker.py ]; then
  "$PY" -m db.worker &
  worker_pid=$!
  trap '[ -n "$worker_pid" ] && kill "$worker_pid" 2>/dev/null || true' EXIT
fi
"$PY" -m streamlit run webapp/app.py --server.port "${PORT:-8501}" --server.headless true \
  --browser.gatherUsageStats false
