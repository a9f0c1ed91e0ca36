"""core.file_cache: an entry is whole and checked or absent; a failed write leaves nothing behind."""

from __future__ import annotations

import os
import resource
import signal
import time
from pathlib import Path

import pytest

from core import file_cache


@pytest.fixture
def entry(tmp_path: Path) -> Path:
    return tmp_path / "cache" / "model.compiled"


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_round_trip(entry):
    payload = os.urandom(100_000)
    assert file_cache.write_entry(entry, payload)
    assert file_cache.read_entry(entry) == payload
    assert not temp_files(entry.parent)
    assert file_cache.write_json_entry(entry.with_suffix(".json"), {"precision": "f32", "ms": 35.2})
    assert file_cache.read_json_entry(entry.with_suffix(".json")) == {"precision": "f32", "ms": 35.2}


def test_a_missing_entry_is_absent(entry):
    assert file_cache.read_entry(entry) is None


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: b"", id="0 bytes"),
        pytest.param(lambda data: data[: len(data) // 2], id="cut short"),
        pytest.param(lambda data: data[:-1] + bytes([data[-1] ^ 1]), id="one bit flipped"),
        pytest.param(lambda data: b"\x00" * len(data), id="zeroed"),
        pytest.param(lambda data: data + b"more", id="grown"),
        pytest.param(lambda data: b"<?xml version='1.0'?><net/>", id="a bare OpenVINO file"),
    ],
)
def test_a_damaged_entry_is_absent_and_deleted(entry, damage):
    assert file_cache.write_entry(entry, os.urandom(5000))
    entry.write_bytes(damage(entry.read_bytes()))
    assert file_cache.read_entry(entry) is None
    assert not entry.exists()  # discarded, so that the next writer rebuilds it
    assert file_cache.write_entry(entry, b"rebuilt") and file_cache.read_entry(entry) == b"rebuilt"


def test_json_that_is_not_an_object_is_discarded(entry):
    assert file_cache.write_entry(entry, b"[1, 2]")
    assert file_cache.read_json_entry(entry) is None and not entry.exists()


def test_a_failed_write_keeps_the_old_entry_and_leaves_no_temporary_file(entry):
    assert file_cache.write_entry(entry, b"old and whole")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit, write() fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))  # the disk is "full" beyond 64 KiB
    try:
        written = file_cache.write_entry(entry, os.urandom(1 << 20))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert written is False
    assert file_cache.read_entry(entry) == b"old and whole"
    assert not temp_files(entry.parent)


def test_a_folder_that_cannot_be_made_is_a_failed_write_not_an_error(tmp_path):
    (tmp_path / "cache").write_text("a file where the folder should be")
    assert file_cache.write_entry(tmp_path / "cache" / "x.compiled", b"payload") is False


def test_temporary_files_of_dead_writers_are_swept_but_live_ones_kept(entry):
    entry.parent.mkdir(parents=True)
    dead = entry.parent / f".{entry.name}.abc123.tmp"
    live = entry.parent / f".{entry.name}.def456.tmp"
    dead.write_bytes(b"half")
    live.write_bytes(b"being written by another process right now")
    an_hour_and_more = time.time() - 3700
    os.utime(dead, (an_hour_and_more, an_hour_and_more))
    assert file_cache.write_entry(entry, b"payload")
    assert not dead.exists() and live.exists()
