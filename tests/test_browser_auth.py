"""Browser: logins live in a server-side session behind a signed cookie, so they survive a reload and
reach a second tab; deep links open for whoever may see them (after a login for an anonymous visitor);
wrong passwords are throttled; logging out in one tab ends the others; nothing is fetched from
outside the server."""

from __future__ import annotations

import re
from urllib.parse import urlparse

import pytest

from db import accounts
from db.engine import dispose_engine, get_engine, session_scope
from db.models import LoginAttempt, UserSession
from tests.browser_fixtures import click_in_sidebar, log_in, settle, streamlit_server, submit_login

pytestmark = pytest.mark.browser

ADMIN, CLINICIAN, PASSWORD = "chief-admin", "dr-lowe", "browser auth passphrase"


@pytest.fixture(scope="module")
def auth_app(tmp_path_factory):
    """A server on an empty database (no model: pages stay light) with an admin and a clinician."""
    home = tmp_path_factory.mktemp("home")
    url = f"sqlite:///{home / 'auth.db'}"
    engine = get_engine(url)
    with session_scope(engine) as session:
        accounts.create_user(session, ADMIN, PASSWORD, role="admin")
        accounts.create_user(session, CLINICIAN, PASSWORD, role="clinician")
    env = {"CHEXNET_HOME": str(home), "DATABASE_URL": url, "CHEXNET_MODEL": str(home / "no-model")}
    with streamlit_server(env, home / "app.log") as app_url:
        yield app_url, engine
    dispose_engine(url)


def test_login_survives_reload_and_second_tab_and_logout_ends_both(new_page, auth_app):
    app_url, engine = auth_app
    first = new_page()
    outside: list[str] = []
    first.context.on("request", lambda request: outside.append(request.url))
    log_in(first, app_url, ADMIN, PASSWORD)
    settle(first)
    cookie = next(c for c in first.context.cookies() if c["name"] == "chexnet_session")
    assert cookie["sameSite"] == "Strict" and cookie["expires"] > 0

    first.reload()
    first.get_by_role("link", name=f"Log out ({ADMIN})").wait_for()

    second = first.context.new_page()  # a second tab of the same browser
    second.goto(f"{app_url}/models")  # an admin page, typed or bookmarked
    second.get_by_role("heading", name="Models & ROC").wait_for()
    second.get_by_role("link", name=f"Log out ({ADMIN})").wait_for()
    second.goto(f"{app_url}/review")  # the landing page keeps its own URL too
    second.get_by_role("heading", name="Review labels").wait_for()
    assert urlparse(second.url).path.endswith("/review")

    first.goto(f"{app_url}/models")  # log out from a page with the sidebar open (Review collapses it)
    first.get_by_role("heading", name="Models & ROC").wait_for()
    click_in_sidebar(first, f"Log out ({ADMIN})")
    first.get_by_role("link", name="Log in").wait_for()
    with session_scope(engine, read_only=True) as session:
        assert session.query(UserSession).filter(UserSession.revoked_at.is_(None)).count() == 0

    # The other tab still shows the page; its next run finds the session revoked.
    click_in_sidebar(second, "Predict")
    second.get_by_role("link", name="Log in").wait_for()
    assert second.get_by_role("link", name=re.compile("Log out")).count() == 0
    second.goto(f"{app_url}/models")
    second.get_by_text("Log in to open Models & ROC.").wait_for()

    hosts = {urlparse(url).hostname for url in outside if url.startswith("http")}
    assert hosts <= {"127.0.0.1"}, f"fetched from outside the server: {sorted(hosts)}"


def test_anonymous_deep_link_logs_in_and_lands_on_the_page(new_page, auth_app):
    app_url, _ = auth_app
    page = new_page()
    page.goto(f"{app_url}/quality")
    page.get_by_text("Log in to open Label quality.").wait_for()
    submit_login(page, CLINICIAN, PASSWORD)
    page.get_by_role("heading", name="Label quality").wait_for()
    page.get_by_role("link", name=f"Log out ({CLINICIAN})").wait_for()
    assert urlparse(page.url).path.endswith("/quality")
    page.goto(f"{app_url}/models")  # not for clinicians, even by URL
    page.get_by_text("Your account does not have access to this page.").wait_for()

    admin = new_page()
    admin.goto(f"{app_url}/models")
    admin.get_by_text("Log in to open Models & ROC.").wait_for()
    submit_login(admin, ADMIN, PASSWORD)
    admin.get_by_role("heading", name="Models & ROC").wait_for()
    assert urlparse(admin.url).path.endswith("/models")


def test_a_dozen_wrong_passwords_are_throttled(new_page, auth_app):
    app_url, engine = auth_app
    page = new_page()
    page.goto(f"{app_url}/login")

    def recorded_failures() -> int:
        with session_scope(engine, read_only=True) as session:
            return session.query(LoginAttempt).filter_by(username_key=ADMIN, succeeded=False).count()

    free = accounts.login_throttle.USERNAME_FREE_FAILURES
    for attempt in range(1, free + 1):  # checked and refused, each stored
        submit_login(page, ADMIN, "not the password at all")
        for _ in range(120):
            if recorded_failures() >= attempt:
                break
            page.wait_for_timeout(250)
    page.get_by_text(accounts.WRONG_LOGIN_SENTENCE).wait_for()
    for _ in range(12 - free):  # the rest of the dozen: refused before any check
        submit_login(page, ADMIN, "not the password at all")
        settle(page)
    throttled = re.compile(r"Too many failed attempts; try again in \d+ minutes?\.")
    page.get_by_text(throttled).wait_for()

    submit_login(page, ADMIN, PASSWORD)  # even the right password waits out the backoff
    settle(page)
    page.wait_for_timeout(1500)
    page.get_by_text(throttled).wait_for()
    assert page.get_by_role("link", name=re.compile("Log out")).count() == 0
    # One more stored failure per minute that the backoff ran out while a slow browser kept trying.
    assert free <= recorded_failures() < free + 4
