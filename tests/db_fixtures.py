"""Database fixtures (a pytest plugin, registered in tests/conftest.py).

- `engine`: a freshly migrated database, once on SQLite (a file in tmp_path) and once on PostgreSQL
  (a new database on a throwaway server). The server is $TEST_DATABASE_URL (a URL of a database of a
  user allowed to CREATE DATABASE) or is started once per test session by scripts/postgres.sh. When
  no server can be had, the PostgreSQL runs fail if $CI is set and are skipped otherwise.
- `sqlite_engine`: the SQLite one only, for tests that are not about the backend.
- `make_user`, `make_images`: factories for users and minimal images (with NLP labels), acting on
  `engine` (so a test using them runs on both backends; don't combine them with `sqlite_engine`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url

from core.labels import FINDINGS
from core.paths import REPO_ROOT
from db import accounts
from db.engine import dispose_engine, get_engine, normalize_url, session_scope
from db.models import SOURCE_NLP, Image, NlpLabel, User, set_findings

POSTGRES_SCRIPT = REPO_ROOT / "scripts" / "postgres.sh"
TEST_PASSWORD = "correct horse battery"


def _postgres_unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} CI is set, so the PostgreSQL tests must run, not be skipped.", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """URL of a PostgreSQL database on a server where tests may create databases."""
    given = os.environ.get("TEST_DATABASE_URL", "").strip()
    if given:
        yield normalize_url(given)
        return
    folder = tempfile.mkdtemp(prefix="chexnet-pg-")
    try:
        started = subprocess.run(
            [str(POSTGRES_SCRIPT), "start", folder], capture_output=True, text=True, timeout=300, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        shutil.rmtree(folder, ignore_errors=True)
        _postgres_unavailable(f"PostgreSQL could not be started with {POSTGRES_SCRIPT.name}: {exc}.")
    if started.returncode != 0:
        subprocess.run([str(POSTGRES_SCRIPT), "stop", folder], capture_output=True, timeout=120, check=False)
        shutil.rmtree(folder, ignore_errors=True)
        lines = (started.stderr or started.stdout).strip().splitlines()
        detail = lines[-1] if lines else "no output"
        _postgres_unavailable(f"PostgreSQL could not be started with {POSTGRES_SCRIPT.name}: {detail}.")
    try:
        yield started.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run([str(POSTGRES_SCRIPT), "stop", folder], capture_output=True, timeout=120, check=False)


def _sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'chexnet.db'}"
    yield get_engine(url)
    dispose_engine(url)


def _postgres_engine(server_url: str) -> Iterator[Engine]:
    name = f"chexnet_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
        yield get_engine(url)
        dispose_engine(url)
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A migrated, empty database; the test runs once per backend."""
    if request.param == "sqlite":
        yield from _sqlite_engine(tmp_path)
    else:
        yield from _postgres_engine(request.getfixturevalue("postgres_server"))


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    yield from _sqlite_engine(tmp_path)


@pytest.fixture
def fast_password_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Argon2 with small cost parameters: still real argon2id hashes, just cheap to make in tests."""
    monkeypatch.setattr(accounts, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


@pytest.fixture
def make_user(engine: Engine, fast_password_hashing: None) -> Callable[..., User]:
    def make(username: str, role: str = "clinician", password: str = TEST_PASSWORD) -> User:
        with session_scope(engine) as session:
            return accounts.create_user(session, username, password, role=role)

    return make


@pytest.fixture
def make_images(engine: Engine) -> Callable[..., list[int]]:
    """make(n, nlp={position: [findings]}, split=...) -> ids of n new dataset images with NLP labels."""
    counter = iter(range(1_000_000))

    def make(
        n: int, nlp: Mapping[int, list[str]] | None = None, split: str = "train_val", with_nlp: bool = True
    ) -> list[int]:
        nlp = nlp or {}
        with session_scope(engine) as session:
            images = []
            for position in range(n):
                number = next(counter)
                image = Image(
                    image_index=f"{number:08d}_000.png",
                    patient_id=number,
                    view="PA",
                    split=split,
                    source="dataset",
                )
                session.add(image)
                images.append((position, image))
            session.flush()
            if with_nlp:
                for position, image in images:
                    label = NlpLabel(image_id=image.id, source=SOURCE_NLP)
                    set_findings(label, {f: f in nlp.get(position, []) for f in FINDINGS})
                    session.add(label)
            return [image.id for _, image in images]

    return make
