#!/usr/bin/env bash
# Serve CheXNet Studio on http://127.0.0.1:8501 (CHEXNET_BIND to change), with a training worker beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
export CHEXNET_HOME="${CHEXNET_HOME:-$PWD/var}"
mkdir -p -m 700 "$CHEXNET_HOME"  # private: the database, uploads and secrets live here
# Migrate the database, create the first admin (its password goes to a private file under
# CHEXNET_HOME; this says where) and, on an empty registry, register the bundled demo model as active.
"$PY" -m db init-admin
worker_pid=""
if [ -f jobs/__main__.py ]; then
  "$PY" -m jobs &
  worker_pid=$!
  trap '[ -n "$worker_pid" ] && kill "$worker_pid" 2>/dev/null || true' EXIT
fi
# Only this machine can connect unless CHEXNET_BIND says otherwise (e.g. 0.0.0.0 behind a firewall).
"$PY" -m streamlit run webapp/app.py --server.port "${PORT:-8501}" --server.headless true \
  --server.address "${CHEXNET_BIND:-127.0.0.1}" --browser.gatherUsageStats false
