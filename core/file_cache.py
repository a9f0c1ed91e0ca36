"""Cache entries that are either whole and checked, or absent: never half-written, never trusted blindly.

An entry is one file: a magic line, the sha256 and length of the payload, then the payload. It is written
to a temporary file in the same folder and renamed over the entry (`os.replace` is atomic), so a full
disk, a crash or two processes writing at once leave the old entry, the new one, or none, and never a
0-byte or partial file. Reading checks the magic, length and digest; an entry that fails (truncated,
zeroed, garbage, an older format) is deleted and reported as absent, so the caller rebuilds it.

A cache is an optimisation: failing to write one (disk full, read-only folder) is reported, not raised.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

__all__ = ["discard", "read_entry", "read_json_entry", "write_entry", "write_json_entry"]

_MAGIC = b"chexnet-cache-1\n"
_HEADER = len(_MAGIC) + 32 + 8  # magic, sha256 of the payload, payload length (big-endian)
_TEMP_SUFFIX = ".tmp"
# A temporary file this old was left by a process that died while writing (kill -9, power loss).
_STALE_TEMP_S = 3600


def read_entry(path: Path) -> bytes | None:
    """The payload of a whole, checked entry; None when it is absent or was damaged (then deleted)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError:
        discard(path)
        return None
    if len(data) >= _HEADER and data.startswith(_MAGIC):
        digest = data[len(_MAGIC) : len(_MAGIC) + 32]
        length = int.from_bytes(data[len(_MAGIC) + 32 : _HEADER], "big")
        payload = memoryview(data)[_HEADER:]
        if len(payload) == length and hashlib.sha256(payload).digest() == digest:
            return data[_HEADER:]
    discard(path)
    return None


def write_entry(path: Path, payload: bytes) -> bool:
    """Store `payload` as the entry at `path`, atomically; False (and nothing left behind) if it failed."""
    header = _MAGIC + hashlib.sha256(payload).digest() + len(payload).to_bytes(8, "big")
    temp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(path)
        handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TEMP_SUFFIX)
        with os.fdopen(handle, "wb") as out:
            out.write(header)
            out.write(payload)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
        temp = None
        return True
    except OSError:
        return False
    finally:
        if temp is not None:
            _unlink(Path(temp))


def read_json_entry(path: Path) -> dict | None:
    payload = read_entry(path)
    if payload is None:
        return None
    try:
        value = json.loads(payload)
    except ValueError:
        discard(path)
        return None
    if not isinstance(value, dict):
        discard(path)
        return None
    return value


def write_json_entry(path: Path, value: dict) -> bool:
    return write_entry(path, json.dumps(value, sort_keys=True).encode())


def discard(path: Path) -> None:
    """Delete an entry that cannot be used, so that it is rebuilt (quietly: another process may have)."""
    _unlink(path)


def _unlink(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def _remove_stale_temps(path: Path) -> None:
    cutoff = time.time() - _STALE_TEMP_S
    for temp in path.parent.glob(f".{path.name}.*{_TEMP_SUFFIX}"):
        try:
            if temp.stat().st_mtime < cutoff:
                temp.unlink()
        except OSError:
            continue
