"""Logging in through the whole app (webapp/app.py with its navigation), the first-start admin account,
and role gating of the protected pages."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from core.paths import REPO_ROOT
from db import accounts
from db.engine import dispose_engine, get_engine, session_scope
from webapp import database
from webapp.auth import SessionUser

APP = str(REPO_ROOT / "webapp" / "app.py")
VIEWS = REPO_ROOT / "webapp" / "views"
PASSWORD = "correct horse battery"


@pytest.fixture
def db_url(tmp_path, monkeypatch, fast_password_hashing):
    """An empty migrated database the app uses through DATABASE_URL; no model, so pages stay light."""
    url = f"sqlite:///{tmp_path / 'auth.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("CHEXNET_HOME", str(tmp_path))
    monkeypatch.delenv("CHEXNET_MODEL", raising=False)
    monkeypatch.setattr("core.paths.BUNDLED_MODEL_DIR", tmp_path / "no-bundled-model")
    yield url
    dispose_engine(url)


@pytest.fixture
def accounts_db(db_url):
    with session_scope(get_engine(db_url)) as session:
        accounts.create_user(session, "alice", PASSWORD, role="clinician")
        accounts.create_user(session, "root", PASSWORD, role="admin")
        carl = accounts.create_user(session, "carl", PASSWORD, role="clinician")
        accounts.set_active(session, carl.id, False)
    return db_url


def log_in(username: str, password: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.switch_page("views/login.py").run()
    at.text_input(key="login_username").set_value(username)
    at.text_input(key="login_password").set_value(password)
    return at.button[0].click().run()


def can_open(at: AppTest, view: str) -> bool:
    """Whether the app's navigation offers the page to this session (a hand-typed URL gets no more)."""
    try:
        at.switch_page(f"views/{view}")
    except ValueError:
        return False
    return True


def test_first_start_creates_the_admin_and_prints_its_password_once(db_url, capsys):
    database.engine()
    database.engine()
    printed = capsys.readouterr().out
    assert printed.count("password:") == 1
    password = printed.split("password:")[1].split()[0]
    user, problem = database.authenticate_user("admin", password)
    assert user is not None and user["role"] == "admin" and problem == ""
    assert database.authenticate_user("admin", password + "x")[0] is None


def test_clinician_logs_in_and_gets_the_clinician_pages(accounts_db):
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not can_open(at, "review.py")  # anonymous: not in the navigation

    at = log_in("alice", PASSWORD)
    assert not at.exception and not at.error
    assert at.session_state["user"] == SessionUser(at.session_state["user"].id, "alice", "clinician")
    assert can_open(at, "review.py") and can_open(at, "quality.py") and can_open(at, "logout.py")
    assert not can_open(at, "login.py")
    for admin_view in ("admin.py", "models.py"):
        if (VIEWS / admin_view).exists():
            assert not can_open(at, admin_view)

    at.switch_page("views/review.py").run()
    assert not at.exception and not at.warning
    assert any("no images yet" in info.value for info in at.info)  # empty database: how to import


def test_admin_logs_in_and_gets_every_page(accounts_db):
    at = log_in("root", PASSWORD)
    assert not at.exception and at.session_state["user"].role == "admin"
    assert can_open(at, "review.py") and can_open(at, "quality.py")
    for admin_view in ("admin.py", "models.py"):
        assert can_open(at, admin_view) == (VIEWS / admin_view).exists()


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
    assert at.session_state.get("user") is None
    assert not can_open(at, "review.py")


@pytest.mark.parametrize("view", ["admin.py", "models.py"])
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
