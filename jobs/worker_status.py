"""Which training workers (`python -m jobs`) are alive and on what device: small files under
CHEXNET_HOME/workers/.

Each worker rewrites its own JSON file every few seconds (state, device, current job); the web app reads
them to say which device a fine-tune will run on. A file not rewritten for `max_age_s` is a worker that
stopped. Files, not a table: the schema belongs to the migrations, and CHEXNET_HOME is shared between
the web app and the workers anyway (see the README's deployment section).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from pathlib import Path
from typing import Any

from core.paths import chexnet_home

ALIVE_AFTER_S = 60.0


def workers_dir() -> Path:
    path = chexnet_home() / "workers"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _file(worker_id: str) -> Path:
    return workers_dir() / (re.sub(r"[^A-Za-z0-9_.-]+", "_", worker_id) + ".json")


def write_worker_status(worker_id: str, **fields: Any) -> None:
    record = {"worker_id": worker_id, **fields, "seen_at": dt.datetime.now(dt.UTC).isoformat()}
    path = _file(worker_id)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, default=str))
    tmp.replace(path)


def remove_worker_status(worker_id: str) -> None:
    _file(worker_id).unlink(missing_ok=True)


def read_worker_statuses(max_age_s: float = ALIVE_AFTER_S) -> list[dict[str, Any]]:
    """Workers seen in the last `max_age_s` seconds, most recently seen first; each with `age_s`."""
    now = dt.datetime.now(dt.UTC)
    found = []
    for path in workers_dir().glob("*.json"):
        try:
            record = json.loads(path.read_text())
            seen = dt.datetime.fromisoformat(record["seen_at"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        record["age_s"] = (now - seen).total_seconds()
        if record["age_s"] <= max_age_s:
            found.append(record)
    return sorted(found, key=lambda r: r["age_s"])
