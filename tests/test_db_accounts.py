"""Accounts: argon2 hashes, login, the initial admin, and the command line."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
from sqlalchemy import Engine, func, select

from core.paths import REPO_ROOT
from db import accounts
from db.__main__ import main
from db.accounts import (
    ADMIN_PASSWORD_ENV,
    InvalidAccountError,
    authenticate,
    create_user,
    ensure_initial_admin,
    set_active,
    set_password,
)
from db.engine import session_scope
from db.errors import UserExistsError
from db.models import User
from tests.db_fixtures import TEST_PASSWORD


def test_password_is_stored_as_an_argon2id_hash(engine: Engine, make_user) -> None:
    user = make_user("alice")
    with session_scope(engine) as session:
        stored = session.get(User, user.id)
        assert stored is not None
        assert stored.password_hash.startswith("$argon2id$")
        assert TEST_PASSWORD not in stored.password_hash


def test_authenticate(engine: Engine, make_user) -> None:
    make_user("alice", role="admin")
    with session_scope(engine) as session:
        user = authenticate(session, "alice", TEST_PASSWORD)
        assert user is not None and user.role == "admin" and user.last_login_at is not None
        assert authenticate(session, "alice", TEST_PASSWORD + "!") is None
        assert authenticate(session, "nobody", TEST_PASSWORD) is None
        assert authenticate(session, "alice", "") is None


def test_deactivated_user_cannot_log_in_and_password_can_change(engine: Engine, make_user) -> None:
    user = make_user("bob")
    with session_scope(engine) as session:
        set_active(session, user.id, False)
    with session_scope(engine) as session:
        assert authenticate(session, "bob", TEST_PASSWORD) is None
        set_active(session, user.id, True)
        set_password(session, user.id, "a new password")
    with session_scope(engine) as session:
        assert authenticate(session, "bob", TEST_PASSWORD) is None
        assert authenticate(session, "bob", "a new password") is not None


def test_unknown_users_cost_a_verification_too(
    engine: Engine, make_user, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_user("carol")
    calls: list[str] = []
    real_verify = accounts.verify_password

    def counting_verify(password_hash: str, password: str) -> bool:
        calls.append(password_hash)
        return real_verify(password_hash, password)

    monkeypatch.setattr(accounts, "verify_password", counting_verify)
    with session_scope(engine) as session:
        assert authenticate(session, "nobody", "whatever1") is None
        assert authenticate(session, "carol", "whatever1") is None
    assert len(calls) == 2 and all(h.startswith("$argon2id$") for h in calls)


def test_usernames_are_unique_and_inputs_validated(engine: Engine, make_user) -> None:
    make_user("dora")
    with session_scope(engine) as session:
        with pytest.raises(UserExistsError, match="already taken"):
            create_user(session, "dora", TEST_PASSWORD)
        with pytest.raises(InvalidAccountError, match="at least 8"):
            create_user(session, "erin", "short")
        with pytest.raises(InvalidAccountError, match="role"):
            create_user(session, "erin", TEST_PASSWORD, role="superuser")
        with pytest.raises(InvalidAccountError, match="username"):
            create_user(session, "has space", TEST_PASSWORD)


def test_initial_admin_is_created_once_with_a_random_password(
    engine: Engine, fast_password_hashing: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ADMIN_PASSWORD_ENV, raising=False)
    password = ensure_initial_admin(engine)
    assert password and len(password) >= 12
    assert ensure_initial_admin(engine) is None
    with session_scope(engine) as session:
        assert session.scalar(select(func.count()).select_from(User)) == 1
        admin = authenticate(session, "admin", password)
        assert admin is not None and admin.role == "admin"


def test_initial_admin_password_from_environment(
    engine: Engine, fast_password_hashing: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ADMIN_PASSWORD_ENV, "from the environment")
    assert ensure_initial_admin(engine) is None  # nothing to show: the operator knows it
    with session_scope(engine) as session:
        assert authenticate(session, "admin", "from the environment") is not None


def test_no_initial_admin_when_users_exist(engine: Engine, make_user) -> None:
    make_user("frank")
    assert ensure_initial_admin(engine) is None
    with session_scope(engine) as session:
        assert session.scalar(select(User).where(User.username == "admin")) is None


def test_cli_create_user_reads_the_password_from_stdin(
    sqlite_engine: Engine, fast_password_hashing: None, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    url = sqlite_engine.url.render_as_string(hide_password=False)
    monkeypatch.setattr(sys, "stdin", io.StringIO("stdin password\n"))
    assert main(["--database-url", url, "create-user", "gina", "--role", "admin", "--password-stdin"]) == 0
    assert "Created admin 'gina'" in capsys.readouterr().out
    with session_scope(sqlite_engine) as session:
        assert authenticate(session, "gina", "stdin password") is not None
    monkeypatch.setattr(sys, "stdin", io.StringIO("stdin password\n"))
    assert main(["--database-url", url, "create-user", "gina", "--password-stdin"]) == 1
    assert "already taken" in capsys.readouterr().err


def test_cli_runs_as_a_module(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    result = subprocess.run(
        [sys.executable, "-m", "db", "--database-url", url, "migrate"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Database at revision" in result.stdout
