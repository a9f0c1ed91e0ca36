"""Accounts: argon2 hashes, the password and username rules, login outside transactions, throttling,
the initial admin's private password file, and the command line."""

from __future__ import annotations

import datetime as dt
import io
import os
import subprocess
import sys

import pytest
from sqlalchemy import Engine, event, func, select

from core.paths import REPO_ROOT
from db import accounts, login_throttle
from db.__main__ import main
from db.account_cli import PasswordInputError, read_new_password
from db.accounts import (
    ADMIN_PASSWORD_ENV,
    InvalidAccountError,
    LoginClient,
    authenticate,
    create_user,
    ensure_initial_admin,
    log_in,
    set_active,
    set_password,
)
from db.engine import session_scope
from db.errors import NotAllowedError, UserExistsError
from db.models import LoginAttempt, User
from tests.db_fixtures import TEST_PASSWORD

CLIENT = LoginClient(address="10.1.2.3", user_agent="pytest")


@pytest.fixture
def make_sqlite_user(sqlite_engine: Engine, fast_password_hashing: None):
    """Users on SQLite only, for rules that do not depend on the backend."""

    def make(username: str, role: str = "clinician") -> User:
        with session_scope(sqlite_engine) as session:
            return create_user(session, username, TEST_PASSWORD, role=role)

    return make


def test_password_is_stored_as_an_argon2id_hash(sqlite_engine: Engine, make_sqlite_user) -> None:
    user = make_sqlite_user("alice")
    with session_scope(sqlite_engine) as session:
        stored = session.get(User, user.id)
        assert stored is not None
        assert stored.password_hash.startswith("$argon2id$")
        assert TEST_PASSWORD not in stored.password_hash


def test_authenticate(engine: Engine, make_user) -> None:
    make_user("alice", role="admin")
    account = authenticate(engine, "alice", TEST_PASSWORD)
    assert account is not None and account.role == "admin" and account.username == "alice"
    assert authenticate(engine, "ALICE", TEST_PASSWORD) is not None  # names ignore case
    assert authenticate(engine, "alice", TEST_PASSWORD + "!") is None
    assert authenticate(engine, "nobody", TEST_PASSWORD) is None
    assert authenticate(engine, "alice", "") is None


def test_deactivated_user_cannot_log_in_and_password_can_change(
    sqlite_engine: Engine, make_sqlite_user
) -> None:
    user = make_sqlite_user("bob")
    with session_scope(sqlite_engine) as session:
        set_active(session, user.id, False)
    assert authenticate(sqlite_engine, "bob", TEST_PASSWORD) is None
    with session_scope(sqlite_engine) as session:
        set_active(session, user.id, True)
        set_password(session, user.id, "a brand new password")
    assert authenticate(sqlite_engine, "bob", TEST_PASSWORD) is None
    assert authenticate(sqlite_engine, "bob", "a brand new password") is not None


def test_unknown_users_cost_a_verification_too(
    sqlite_engine: Engine, make_sqlite_user, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_sqlite_user("carol")
    calls: list[str] = []
    real_verify = accounts.verify_password

    def counting_verify(password_hash: str, password: str) -> bool:
        calls.append(password_hash)
        return real_verify(password_hash, password)

    monkeypatch.setattr(accounts, "verify_password", counting_verify)
    assert log_in(sqlite_engine, "nobody", "whatever it is", CLIENT).account is None
    assert log_in(sqlite_engine, "carol", "whatever it is", CLIENT).account is None
    assert len(calls) == 2 and all(h.startswith("$argon2id$") for h in calls)


def test_login_verifies_outside_any_transaction(
    sqlite_engine: Engine, fast_password_hashing: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While argon2 runs, no connection of the engine is inside a transaction (no SQLite write lock)."""
    with session_scope(sqlite_engine) as session:
        create_user(session, "dana", TEST_PASSWORD)
    open_transactions: list[int] = []
    event.listen(sqlite_engine, "begin", lambda conn: open_transactions.append(1))
    event.listen(sqlite_engine, "commit", lambda conn: open_transactions.pop())
    event.listen(
        sqlite_engine, "rollback", lambda conn: open_transactions.pop() if open_transactions else None
    )
    seen_during_verify: list[int] = []
    real_verify = accounts.verify_password

    def watching_verify(password_hash: str, password: str) -> bool:
        seen_during_verify.append(len(open_transactions))
        return real_verify(password_hash, password)

    monkeypatch.setattr(accounts, "verify_password", watching_verify)
    assert log_in(sqlite_engine, "dana", TEST_PASSWORD, CLIENT).account is not None
    assert log_in(sqlite_engine, "dana", "a wrong password", CLIENT).account is None
    assert log_in(sqlite_engine, "nobody", "a wrong password", CLIENT).account is None
    assert seen_during_verify == [0, 0, 0]


def test_logins_are_recorded_and_open_a_session(engine: Engine, make_user) -> None:
    make_user("erin")
    result = log_in(engine, "erin", TEST_PASSWORD, CLIENT)
    assert result.account is not None and result.token and result.problem == ""
    assert log_in(engine, "erin", "wrong password!", CLIENT).problem == accounts.WRONG_LOGIN_SENTENCE
    with session_scope(engine, read_only=True) as session:
        attempts = session.execute(
            select(LoginAttempt.username_key, LoginAttempt.client, LoginAttempt.succeeded).order_by(
                LoginAttempt.id
            )
        ).all()
        assert [tuple(a) for a in attempts] == [("erin", "10.1.2.3", True), ("erin", "10.1.2.3", False)]
        assert session.get(User, result.account.id).last_login_at is not None


def test_failed_logins_back_off_per_username(engine: Engine, make_user) -> None:
    make_user("fred")
    for _ in range(login_throttle.USERNAME_FREE_FAILURES):
        assert log_in(engine, "Fred", "wrong password!", CLIENT).problem == accounts.WRONG_LOGIN_SENTENCE
    throttled = log_in(engine, "fred", TEST_PASSWORD, CLIENT)  # even the right password, from anywhere
    assert throttled.account is None
    assert throttled.problem == "Too many failed attempts; try again in 1 minute."
    other_client = log_in(engine, "fred", TEST_PASSWORD, LoginClient(address="10.9.9.9"))
    assert other_client.problem.startswith("Too many failed attempts; try again in ")
    with session_scope(engine, read_only=True) as session:  # throttled attempts are not verified or stored
        assert session.scalar(select(func.count()).select_from(LoginAttempt)) == 5


def failure_at(moment: dt.datetime) -> LoginAttempt:
    return LoginAttempt(at=moment, username_key="gina", client="x", succeeded=False)


def test_backoff_doubles_and_a_success_resets_it(sqlite_engine: Engine, make_sqlite_user) -> None:
    make_sqlite_user("gina")
    now = accounts.utcnow()
    with session_scope(sqlite_engine) as session:
        for minutes_ago in (9, 8, 7, 6, 5, 4, 3):  # 7 failures: 2 past the free ones, the last 3 min ago
            session.add(
                LoginAttempt(
                    at=now - dt.timedelta(minutes=minutes_ago),
                    username_key="gina",
                    client="x",
                    succeeded=False,
                )
            )
    with session_scope(sqlite_engine, read_only=True) as session:
        wait = login_throttle.throttle_wait(session, "gina", "elsewhere", now)
    assert dt.timedelta(seconds=59) < wait <= dt.timedelta(minutes=1)  # 4 minutes after the last one
    assert login_throttle.wait_sentence(dt.timedelta(seconds=61)) == (
        "Too many failed attempts; try again in 2 minutes."
    )
    assert login_throttle.backoff(5, 5) == dt.timedelta(minutes=1)
    assert login_throttle.backoff(30, 5) == login_throttle.MAX_WAIT
    with session_scope(sqlite_engine) as session:
        session.add(
            LoginAttempt(at=now - dt.timedelta(minutes=2), username_key="gina", client="x", succeeded=True)
        )
    with session_scope(sqlite_engine, read_only=True) as session:
        assert login_throttle.throttle_wait(session, "gina", "elsewhere", now) == dt.timedelta(0)


def test_many_usernames_from_one_client_are_throttled(sqlite_engine: Engine, fast_password_hashing) -> None:
    wrong = accounts.WRONG_LOGIN_SENTENCE
    for n in range(login_throttle.CLIENT_FREE_FAILURES):
        assert log_in(sqlite_engine, f"guess{n}", "wrong password!", CLIENT).problem == wrong
    assert log_in(sqlite_engine, "guess-next", "wrong password!", CLIENT).problem.startswith("Too many")
    assert log_in(sqlite_engine, "guess-next", "wrong password!", LoginClient("10.7.7.7")).problem == wrong


@pytest.mark.parametrize(
    ("password", "sentence"),
    [
        ("short pw", "at least 12"),
        (" " * 14, "only spaces"),
        ("password1234", "most common"),
        ("Qwerty123456", "most common"),
        ("1q2w3e4r5t6y", "most common"),
        ("pass word 1234", "most common"),  # whitespace does not hide a common one
        ("aaaaaaaaaaaa", "most common"),
        ("hannah-smith", "the username"),
    ],
)
def test_weak_passwords_are_refused(password, sentence) -> None:
    with pytest.raises(InvalidAccountError, match=sentence):
        accounts.validate_password(password, "Hannah-Smith")


def test_the_common_password_list_is_bundled_and_large() -> None:
    common = accounts.common_passwords()
    assert len(common) >= 1000
    assert {"password", "123456", "qwertyuiop", "iloveyou1234"} <= common
    assert "correcthorsebattery" not in common  # the suite's own test password stays usable


@pytest.mark.parametrize(
    "username", ["has space", "admin.", "semi;colon", "a@b", "-leading", "x" * 65, "", "ümlaut"]
)
def test_bad_usernames_are_refused(username) -> None:
    with pytest.raises(InvalidAccountError, match="username"):
        accounts.validate_username(username)


def test_usernames_are_unique_ignoring_case(engine: Engine, make_user) -> None:
    make_user("admin", role="admin")
    with session_scope(engine) as session:
        with pytest.raises(InvalidAccountError, match="username"):  # the rules apply on creation
            create_user(session, "admin.", TEST_PASSWORD)
        with pytest.raises(InvalidAccountError, match="most common"):
            create_user(session, "newcomer", "password1234")
        for taken in ("admin", "Admin", "ADMIN"):
            with pytest.raises(UserExistsError, match="already taken"):
                create_user(session, taken, TEST_PASSWORD)
        with pytest.raises(InvalidAccountError, match="role"):
            create_user(session, "erin", TEST_PASSWORD, role="superuser")
    with pytest.raises(Exception, match="(?i)unique"):  # the database itself refuses it too
        with session_scope(engine) as session:
            session.add(User(username="AdMin", password_hash="x", role="clinician"))


def test_privileged_actions_re_read_the_account(sqlite_engine: Engine, make_sqlite_user) -> None:
    admin = make_sqlite_user("ivy", role="admin")
    with session_scope(sqlite_engine) as session:
        assert accounts.require_active_role(session, admin.id, "admin").username == "ivy"
        accounts.set_role(session, admin.id, "clinician")
    with session_scope(sqlite_engine) as session:
        with pytest.raises(NotAllowedError, match="no longer allowed"):
            accounts.require_active_role(session, admin.id, "admin")
        set_active(session, admin.id, False)
    with session_scope(sqlite_engine) as session:
        with pytest.raises(NotAllowedError):
            accounts.require_active_role(session, admin.id, "clinician", "admin")


def test_change_password_needs_the_current_one(sqlite_engine: Engine, make_sqlite_user) -> None:
    user = make_sqlite_user("jack")
    with pytest.raises(InvalidAccountError, match="current password is not correct"):
        accounts.change_password(sqlite_engine, user.id, "not my password", "an entirely new one")
    with pytest.raises(InvalidAccountError, match="at least 12"):
        accounts.change_password(sqlite_engine, user.id, TEST_PASSWORD, "too short")
    accounts.change_password(sqlite_engine, user.id, TEST_PASSWORD, "an entirely new one")
    assert authenticate(sqlite_engine, "jack", "an entirely new one") is not None
    assert authenticate(sqlite_engine, "jack", TEST_PASSWORD) is None


def test_initial_admin_password_goes_to_a_private_file(
    sqlite_engine: Engine, fast_password_hashing: None, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    monkeypatch.delenv(ADMIN_PASSWORD_ENV, raising=False)
    monkeypatch.setenv("CHEXNET_HOME", str(tmp_path / "home"))
    path = ensure_initial_admin(sqlite_engine)
    assert path == tmp_path / "home" / accounts.INITIAL_PASSWORD_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "home").stat().st_mode & 0o777 == 0o700
    password = path.read_text().split("password: ")[1].split()[0]
    assert len(password) >= 12
    assert ensure_initial_admin(sqlite_engine) is None
    with session_scope(sqlite_engine) as session:
        assert session.scalar(select(func.count()).select_from(User)) == 1
    admin = authenticate(sqlite_engine, "admin", password)
    assert admin is not None and admin.role == "admin"
    accounts.change_password(sqlite_engine, admin.id, password, "the admin's own passphrase")
    assert not path.exists()  # it no longer holds the password


def test_initial_admin_password_from_environment(
    sqlite_engine: Engine, fast_password_hashing: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ADMIN_PASSWORD_ENV, "short")
    with pytest.raises(InvalidAccountError, match=f"{ADMIN_PASSWORD_ENV} cannot be used.*at least 12"):
        ensure_initial_admin(sqlite_engine)
    monkeypatch.setenv(ADMIN_PASSWORD_ENV, "from the environment")
    assert ensure_initial_admin(sqlite_engine) is None  # nothing to show: the operator knows it
    assert authenticate(sqlite_engine, "admin", "from the environment") is not None


def test_no_initial_admin_when_users_exist(sqlite_engine: Engine, make_sqlite_user) -> None:
    make_sqlite_user("frank")
    assert ensure_initial_admin(sqlite_engine) is None
    with session_scope(sqlite_engine) as session:
        assert session.scalar(select(User).where(User.username == "admin")) is None


def test_cli_create_user_reads_the_password_from_stdin(
    sqlite_engine: Engine, fast_password_hashing: None, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    url = sqlite_engine.url.render_as_string(hide_password=False)
    monkeypatch.setattr(sys, "stdin", io.StringIO("stdin password\n"))
    assert main(["--database-url", url, "create-user", "gina", "--role", "admin", "--password-stdin"]) == 0
    assert "Created admin 'gina'" in capsys.readouterr().out
    assert authenticate(sqlite_engine, "gina", "stdin password") is not None
    monkeypatch.setattr(sys, "stdin", io.StringIO("stdin password\n"))  # not a terminal: stdin it is
    assert main(["--database-url", url, "create-user", "Gina"]) == 1
    assert "already taken" in capsys.readouterr().err


def test_read_new_password_says_why_when_there_is_none() -> None:
    with pytest.raises(PasswordInputError, match="No password given"):
        read_new_password(False, io.StringIO(""))
    closed = io.StringIO("x")
    closed.close()
    with pytest.raises(PasswordInputError, match="stdin is closed"):
        read_new_password(True, closed)
    assert read_new_password(True, io.StringIO("a line\nmore\n")) == "a line"


def test_cli_create_user_without_terminal_or_input_is_one_sentence(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    result = subprocess.run(
        [sys.executable, "-m", "db", "--database-url", url, "create-user", "kim"],
        cwd=REPO_ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith("error: No password given") and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1


def test_cli_runs_as_a_module(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    result = subprocess.run(
        [sys.executable, "-m", "db", "--database-url", url, "migrate"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Database at revision" in result.stdout
    assert os.stat(tmp_path / "cli.db").st_mode & 0o777 == 0o600
