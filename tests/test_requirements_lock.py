"""requirements.lock is requirements.txt with a sha256 per pin (made by scripts/lock-requirements.sh)."""

from __future__ import annotations

import hashlib
import re

from core.paths import REPO_ROOT

REQUIREMENTS = REPO_ROOT / "requirements.txt"
LOCK = REPO_ROOT / "requirements.lock"
PIP_LOCK = REPO_ROOT / "requirements-pip.lock"
HASHED_PIN = re.compile(r"^(\S+==\S+(?: ; [^\\]+?)?) \\\n    --hash=sha256:([0-9a-f]{64})$", re.M)


def _pins(text: str) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [" ; ".join(part.strip() for part in line.split(";", 1)) for line in lines if line]


def test_the_lock_was_made_from_the_current_requirements():
    lock = LOCK.read_text()
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    assert f"requirements.txt sha256: {digest}" in lock, (
        "requirements.txt changed since the lock was made: run ./scripts/lock-requirements.sh"
    )
    locked = HASHED_PIN.findall(lock)
    assert [pin for pin, _ in locked] == _pins(REQUIREMENTS.read_text())
    assert len({sha for _, sha in locked}) == len(locked)


def test_pip_itself_is_pinned_with_a_hash():
    assert re.fullmatch(r"(#.*\n)+pip==[\d.]+ \\\n    --hash=sha256:[0-9a-f]{64}\n", PIP_LOCK.read_text())
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert "--require-hashes -r requirements-pip.lock" in makefile
    assert "--require-hashes -r requirements.lock" in makefile
    assert "--upgrade pip" not in makefile
