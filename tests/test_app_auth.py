"""Logging in through the whole app (webapp/app.py with its navigation): server-side sessions, deep
links, throttling, role changes reaching live sessions, logout everywhere, the account and sessions
pages, the first-start admin account, and a database outage shown as one sentence."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select, text
from streamlit.testing.v1 import AppTest

from core.paths import REPO_ROOT
from db import accounts
from db.engine import dispose_engine, get_engine, session_scope
from db.models import UserSession
from db.sessions import resolve_session
from webapp import database, session_cookie
from webapp.auth import SessionUser

APP = str(REPO_ROOT / "webapp" / "app.py")
VIEWS = REPO_ROOT / "webapp" / "views"
PASSWORD = "correct horse battery"
NO_ACCESS = "Your account does not have access to this page."


def _use_database(url: str, home, monkeypatch) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("CHEXNET_HOME", str(home))
    monkeypatch.delenv("CHEXNET_MODEL", raising=False)
    monkeypatch.setattr("core.paths.BUNDLED_MODEL_DIR", home / "no-bundled-model")  # pages stay light
    session_cookie._secret_at.cache_clear()


@pytest.fixture
def db_url(tmp_path, monkeypatch, fast_password_hashing):
    """An empty migrated database the app uses through DATABASE_URL; no model, so pages stay light."""
    url = f"sqlite:///{tmp_path / 'auth.db'}"
    _use_database(url, tmp_path, monkeypatch)
    yield url
    dispose_engine(url)


def _add_accounts(url: str) -> str:
    with session_scope(get_engine(url)) as session:
        accounts.create_user(session, "alice", PASSWORD, role="clinician")
        accounts.create_user(session, "root", PASSWORD, role="admin")
        carl = accounts.create_user(session, "carl", PASSWORD, role="clinician")
        accounts.set_active(session, carl.id, False)
    return url


@pytest.fixture
def accounts_db(db_url):
    return _add_accounts(db_url)


def submit(at: AppTest, username: str, password: str) -> AppTest:
    at.text_input(key="login_username").set_value(username)
    at.text_input(key="login_password").set_value(password)
    return at.button[0].click().run()


def log_in(username: str, password: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.switch_page("views/login.py").run()
    return submit(at, username, password)


def opens(at: AppTest, view: str) -> bool:
    """Whether opening the page (as a typed URL would) runs it, rather than the login form or a refusal."""
    if not (VIEWS / view).exists():
        return False
    at.switch_page(f"views/{view}").run()
    assert not at.exception
    gated = any("Log in to open" in info.value for info in at.info)
    refused = any(NO_ACCESS in error.value for error in at.error)
    return not gated and not refused


def user_of(at: AppTest) -> SessionUser | None:
    return at.session_state["user"] if "user" in at.session_state else None


def test_first_start_writes_the_admin_password_to_a_private_file(db_url, tmp_path, capsys):
    database.engine()
    database.engine()
    printed = capsys.readouterr().out
    path = tmp_path / accounts.INITIAL_PASSWORD_FILE
    assert printed.count(str(path)) == 1 and "password:" not in printed
    assert path.stat().st_mode & 0o777 == 0o600
    password = path.read_text().split("password: ")[1].split()[0]
    assert password not in printed
    result = database.attempt_login("admin", password)
    assert result.account is not None and result.account.role == "admin" and result.problem == ""
    assert database.attempt_login("admin", password + "x").account is None


def test_clinician_logs_in_into_a_server_side_session_with_a_signed_cookie(accounts_db):
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not opens(at, "review.py")  # anonymous: the login form answers instead

    at = log_in("alice", PASSWORD)
    assert not at.exception and not at.error
    assert user_of(at) == SessionUser(user_of(at).id, "alice", "clinician")
    token = at.session_state["auth_token"]
    with session_scope(accounts_db, read_only=True) as session:
        stored = session.scalars(select(UserSession)).one()
    assert stored.token_sha256 != token and stored.revoked_at is None
    scripts = [element.proto.body for element in at.get("html")]
    assert any("chexnet_session=" in body for body in scripts)
    value = scripts[0].split("chexnet_session=")[1].split(";")[0]
    assert session_cookie.verify(value) == token  # the cookie carries this token, signed

    assert opens(at, "review.py") and opens(at, "quality.py") and opens(at, "account.py")
    for admin_view in ("admin.py", "models.py", "sessions.py"):
        assert not opens(at, admin_view)
    at.switch_page("views/review.py").run()
    assert not at.exception and not at.warning
    assert any("no images yet" in info.value for info in at.info)  # empty database: how to import


def test_admin_logs_in_and_gets_every_page(accounts_db):
    at = log_in("root", PASSWORD)
    assert not at.exception and user_of(at).role == "admin"
    for view in ("review.py", "quality.py", "models.py", "sessions.py", "account.py"):
        assert opens(at, view), view


@pytest.mark.parametrize(
    ("username", "password", "sentence"),
    [
        ("alice", "wrong password", "not correct"),
        ("nobody", PASSWORD, "not correct"),
        ("carl", PASSWORD, "not correct"),  # the right password of a deactivated account: same sentence
        ("", "", "Enter your username and password"),
    ],
)
def test_failed_login_says_why_and_logs_nobody_in(accounts_db, username, password, sentence):
    at = log_in(username, password)
    assert not at.exception
    assert len(at.error) == 1 and sentence in at.error[0].value
    assert user_of(at) is None
    assert not opens(at, "review.py")


def test_repeated_failures_are_throttled(accounts_db):
    at = log_in("alice", "wrong password")
    for _ in range(6):
        submit(at, "alice", "wrong password")
    assert at.error[0].value == "Too many failed attempts; try again in 1 minute."
    assert submit(at, "alice", PASSWORD).error[0].value.startswith("Too many failed attempts")
    assert user_of(at) is None


def test_anonymous_deep_link_asks_to_log_in_then_opens_the_page(accounts_db):
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.switch_page("views/models.py").run()
    assert [info.value for info in at.info] == ["Log in to open Models & ROC."]
    submit(at, "root", PASSWORD)
    assert not at.exception and at.title[0].value == "Models & ROC"

    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.switch_page("views/models.py").run()
    submit(at, "alice", PASSWORD)
    assert [error.value for error in at.error] == [NO_ACCESS]


def test_demotion_and_deactivation_reach_a_live_session_at_its_next_run(accounts_db):
    at = log_in("root", PASSWORD)
    assert opens(at, "models.py")
    root_id = user_of(at).id
    with session_scope(accounts_db) as session:
        accounts.set_role(session, root_id, "clinician")
    at.run()
    assert [error.value for error in at.error] == [NO_ACCESS] and user_of(at).role == "clinician"
    with session_scope(accounts_db) as session:
        accounts.set_active(session, root_id, False)
    at.run()
    assert user_of(at) is None and any("Log in to open" in info.value for info in at.info)


def test_logout_ends_the_session_in_every_tab(accounts_db):
    first = log_in("alice", PASSWORD)
    second = AppTest.from_file(APP, default_timeout=60)  # another tab, restored from the same cookie
    second.session_state["auth_token"] = first.session_state["auth_token"]
    second.run()
    assert user_of(second).username == "alice" and opens(second, "review.py")

    first.switch_page("views/logout.py").run()
    assert user_of(first) is None and not first.exception
    assert any("1970" in element.proto.body for element in first.get("html"))  # the cookie is removed
    second.run()
    assert user_of(second) is None and any("Log in to open" in info.value for info in second.info)


def test_an_idle_session_ends(accounts_db):
    at = log_in("alice", PASSWORD)
    with session_scope(accounts_db) as session:
        session.execute(text("UPDATE user_sessions SET last_seen_at = '2000-01-01 00:00:00'"))
    at.run()
    assert user_of(at) is None


def test_change_password_page(accounts_db):
    at = log_in("alice", PASSWORD)
    elsewhere = accounts.log_in(get_engine(accounts_db), "alice", PASSWORD, accounts.LoginClient("x"))
    at.switch_page("views/account.py").run()

    def change(current: str, new: str, again: str) -> AppTest:
        boxes = at.text_input
        boxes[0].set_value(current)
        boxes[1].set_value(new)
        boxes[2].set_value(again)
        return at.button[0].click().run()

    assert "not correct" in change("not it", "a fresh passphrase", "a fresh passphrase").error[0].value
    assert "differ" in change(PASSWORD, "a fresh passphrase", "another one").error[0].value
    assert "most common" in change(PASSWORD, "password1234", "password1234").error[0].value
    change(PASSWORD, "a fresh passphrase", "a fresh passphrase")
    assert not at.exception and "Password changed" in at.success[0].value
    assert user_of(at) is not None  # this login stays
    assert accounts.authenticate(get_engine(accounts_db), "alice", "a fresh passphrase") is not None
    with session_scope(accounts_db, read_only=True) as session:
        assert resolve_session(session, elsewhere.token) is None  # the other login ended


def test_admin_lists_and_revokes_sessions(accounts_db):
    alice = log_in("alice", PASSWORD)
    admin = log_in("root", PASSWORD)
    admin.switch_page("views/sessions.py").run()
    listed = admin.dataframe[0].value
    assert sorted(listed["user"]) == ["alice", "root (you, here)"]
    alice_session = int(listed.loc[listed["user"] == "alice", "session"].iloc[0])
    admin.selectbox[0].select(alice_session)
    admin.button[0].click().run()
    assert "ended" in admin.success[0].value
    alice.run()
    assert user_of(alice) is None


@pytest.mark.parametrize("view", ["admin.py", "models.py", "sessions.py"])
def test_clinician_cannot_open_admin_pages_even_directly(accounts_db, view):
    if not (VIEWS / view).exists():
        pytest.skip(f"webapp/views/{view} does not exist yet.")
    at = AppTest.from_file(str(VIEWS / view), default_timeout=60)
    with session_scope(accounts_db) as session:
        alice = accounts.get_user(session, "alice")
    at.session_state["user"] = SessionUser(alice.id, "alice", "clinician")
    at.run()
    assert not at.exception
    assert len(at.error) == 1 and "does not have access" in at.error[0].value
    widgets = ("button", "selectbox", "text_input", "number_input", "slider", "checkbox", "toggle", "radio")
    assert all(len(getattr(at, kind)) == 0 for kind in widgets)
    assert len(at.get("download_button")) == 0 and len(at.get("file_uploader")) == 0
    assert len(at.get("plotly_chart")) == 0 and len(at.dataframe) == 0


def _guarded_failures() -> None:
    """A script whose database calls really fail: an unopenable SQLite file, then a full one."""
    import streamlit as st
    from sqlalchemy import create_engine, text

    from webapp.database import outage_guard

    with outage_guard():
        create_engine("sqlite:////no/such/folder/x.db").connect()
    with outage_guard():
        full = create_engine(f"sqlite:///{st.session_state['full_db']}")
        with full.begin() as connection:
            connection.exec_driver_sql("CREATE TABLE t (x BLOB)")
            pages = connection.exec_driver_sql("PRAGMA page_count").scalar()
            connection.exec_driver_sql(f"PRAGMA max_page_count = {pages + 1}")
            connection.execute(text("INSERT INTO t VALUES (zeroblob(100000))"))
    st.write("the rest of the page still runs")


def test_database_failures_in_a_page_are_one_sentence(tmp_path):
    at = AppTest.from_function(_guarded_failures, default_timeout=60)
    at.session_state["full_db"] = str(tmp_path / "full.db")
    at.run()
    assert not at.exception
    assert [error.value for error in at.error] == [
        database.UNREACHABLE_SENTENCE.format(detail="OperationalError"),
        database.DISK_FULL_SENTENCE,
    ]
    assert at.markdown[-1].value == "the rest of the page still runs"


def _a_page_with_a_bug() -> None:
    import streamlit as st

    from webapp.database import outage_guard

    with outage_guard():
        st.write("before the bug")
        {}["missing"]  # noqa: B018 - the bug
    st.write("after the guarded block")


def test_a_bug_in_a_page_is_one_sentence_with_a_logged_reference(caplog):
    at = AppTest.from_function(_a_page_with_a_bug, default_timeout=60)
    at.run()
    assert not at.exception  # no traceback on screen
    [error] = at.error
    reference = re.search(r"the reference ([0-9a-f]{8})", error.value).group(1)
    assert at.markdown[-1].value == "after the guarded block"
    [record] = [r for r in caplog.records if r.getMessage().startswith(database.UNEXPECTED_LOG_MESSAGE)]
    assert reference in record.getMessage() and "KeyError" in caplog.text  # the traceback is logged
    caplog.clear()  # expected here: the suite-wide check (tests/conftest.py) fails on any other such record


def _terminate_and_rename(admin, old: str, new: str) -> None:
    with admin.connect() as connection:
        connection.execute(
            text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name"),
            {"name": old},
        )
        connection.exec_driver_sql(f'ALTER DATABASE "{old}" RENAME TO "{new}"')


@pytest.mark.postgres
def test_a_postgresql_outage_is_one_sentence_and_recovers(
    postgres_server, tmp_path, monkeypatch, fast_password_hashing
):
    """The real server loses the database (connections cut, then renamed away) and gets it back."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    name = f"chexnet_outage_{tmp_path.name[-8:]}".replace("-", "_").lower()
    admin = create_engine(postgres_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = make_url(postgres_server).set(database=name).render_as_string(hide_password=False)
    _use_database(url, tmp_path, monkeypatch)
    _add_accounts(url)
    try:
        at = log_in("root", PASSWORD)
        assert opens(at, "sessions.py")
        _terminate_and_rename(admin, name, f"{name}_away")
        at.run()
        assert not at.exception
        assert [error.value for error in at.error] == [
            database.UNREACHABLE_SENTENCE.format(detail="OperationalError")
        ]
        _terminate_and_rename(admin, f"{name}_away", name)
        at.run()
        assert not at.exception and not at.error and at.title[0].value == "Sessions"
    finally:
        dispose_engine(url)
        with admin.connect() as connection:
            for database_name in (name, f"{name}_away"):
                connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{database_name}" WITH (FORCE)')
        admin.dispose()
