"""Login sessions (db.sessions) and their signed cookie (webapp.session_cookie)."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import Engine, select, update

from db import accounts, sessions
from db.engine import session_scope
from db.models import UserSession
from tests.db_fixtures import TEST_PASSWORD
from webapp import session_cookie


def _open(engine: Engine, user_id: int) -> str:
    with session_scope(engine) as session:
        token, _ = sessions.create_session(session, user_id, client_ip="10.0.0.1", user_agent="pytest")
    return token


def _resolve(engine: Engine, token: str, now: dt.datetime | None = None) -> sessions.ActiveSession | None:
    with session_scope(engine, read_only=True) as session:
        return sessions.resolve_session(session, token, now)


def test_a_session_is_found_by_its_token_whose_digest_alone_is_stored(engine: Engine, make_user) -> None:
    user = make_user("nina", role="admin")
    token = _open(engine, user.id)
    active = _resolve(engine, token)
    assert active is not None and (active.user_id, active.username, active.role) == (user.id, "nina", "admin")
    assert _resolve(engine, token + "x") is None and _resolve(engine, "") is None
    with session_scope(engine, read_only=True) as session:
        stored = session.scalars(select(UserSession)).one()
    assert stored.token_sha256 == sessions.token_digest(token) and token not in stored.token_sha256
    assert (stored.client_ip, stored.user_agent) == ("10.0.0.1", "pytest")
    assert stored.expires_at - stored.created_at == sessions.SESSION_LIFETIME


def test_revoked_idle_and_expired_sessions_end(engine: Engine, make_user) -> None:
    user = make_user("omar")
    revoked, idle, old = (_open(engine, user.id) for _ in range(3))
    with session_scope(engine) as session:
        assert sessions.revoke_session(session, revoked)
        assert not sessions.revoke_session(session, revoked)  # once only
    assert _resolve(engine, revoked) is None

    now = accounts.utcnow()
    assert _resolve(engine, idle, now + sessions.IDLE_TIMEOUT - dt.timedelta(seconds=5)) is not None
    assert _resolve(engine, idle, now + sessions.IDLE_TIMEOUT + dt.timedelta(seconds=5)) is None
    # Used now and then, a session still ends at its absolute expiry.
    with session_scope(engine) as session:
        session.execute(
            update(UserSession)
            .where(UserSession.token_sha256 == sessions.token_digest(old))
            .values(last_seen_at=now + sessions.SESSION_LIFETIME)
        )
    assert _resolve(engine, old, now + sessions.SESSION_LIFETIME + dt.timedelta(seconds=1)) is None


def test_touch_moves_the_idle_deadline(engine: Engine, make_user) -> None:
    user = make_user("pia")
    token = _open(engine, user.id)
    later = accounts.utcnow() + sessions.IDLE_TIMEOUT - dt.timedelta(minutes=1)
    active = _resolve(engine, token, later)
    assert active is not None and active.due_for_touch(later)
    with session_scope(engine) as session:
        sessions.touch_session(session, active.session_id, later)
    assert _resolve(engine, token, later + sessions.IDLE_TIMEOUT - dt.timedelta(minutes=1)) is not None
    assert not _resolve(engine, token, later).due_for_touch(later)


def test_role_changes_show_at_once_and_deactivation_ends_every_session(engine: Engine, make_user) -> None:
    user = make_user("quinn", role="admin")
    first, second = _open(engine, user.id), _open(engine, user.id)
    with session_scope(engine) as session:
        accounts.set_role(session, user.id, "clinician")
    assert _resolve(engine, first).role == "clinician"
    with session_scope(engine, read_only=True) as session:
        assert {row.username for row in sessions.list_live_sessions(session)} == {"quinn"}
    with session_scope(engine) as session:
        accounts.set_active(session, user.id, False)
    assert _resolve(engine, first) is None and _resolve(engine, second) is None
    with session_scope(engine) as session:
        accounts.set_active(session, user.id, True)
    assert _resolve(engine, first) is None  # revoked, not merely paused
    with session_scope(engine, read_only=True) as session:
        assert sessions.list_live_sessions(session) == []


def test_a_password_change_ends_the_other_sessions_only(engine: Engine, make_user) -> None:
    user = make_user("rosa")
    here, elsewhere = _open(engine, user.id), _open(engine, user.id)
    accounts.change_password(engine, user.id, TEST_PASSWORD, "rosa's new passphrase", keep_token=here)
    assert _resolve(engine, here) is not None and _resolve(engine, elsewhere) is None
    with session_scope(engine) as session:  # an admin's reset ends them all
        accounts.set_password(session, user.id, "reset by the admin")
    assert _resolve(engine, here) is None


def test_login_opens_a_session_admins_can_list_and_revoke(engine: Engine, make_user) -> None:
    make_user("sam")
    result = accounts.log_in(engine, "sam", TEST_PASSWORD, accounts.LoginClient("192.0.2.7", "Firefox"))
    assert result.account is not None and result.expires_at is not None
    with session_scope(engine, read_only=True) as session:
        [row] = sessions.list_live_sessions(session)
    assert (row.username, row.client_ip, row.user_agent) == ("sam", "192.0.2.7", "Firefox")
    with session_scope(engine) as session:
        assert sessions.revoke_session_id(session, row.id)
    assert _resolve(engine, result.token) is None


@pytest.fixture
def cookie_home(tmp_path, monkeypatch):
    monkeypatch.setenv("CHEXNET_HOME", str(tmp_path))
    session_cookie._secret_at.cache_clear()
    yield tmp_path
    session_cookie._secret_at.cache_clear()


def test_cookie_values_are_signed_and_expire(cookie_home) -> None:
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    value = session_cookie.sign("tok-en_1", expires)
    assert session_cookie.verify(value) == "tok-en_1"
    token, expiry, signature = value.split(".")
    assert session_cookie.verify(f"tok-en_2.{expiry}.{signature}") is None  # another token
    assert session_cookie.verify(f"{token}.{int(expiry) + 3600}.{signature}") is None  # a longer life
    tampered = signature[:-1] + ("B" if signature.endswith("A") else "A")  # a different last character
    assert session_cookie.verify(f"{token}.{expiry}.{tampered}") is None
    assert session_cookie.verify("garbage") is None and session_cookie.verify("a.b.c") is None
    assert session_cookie.verify(value, now=expires + dt.timedelta(seconds=1)) is None


def test_the_cookie_secret_is_made_once_and_private(cookie_home) -> None:
    first = session_cookie.cookie_secret()
    path = cookie_home / session_cookie.SECRET_FILE
    assert path.stat().st_mode & 0o777 == 0o600 and len(first) >= 64
    session_cookie._secret_at.cache_clear()
    assert session_cookie.cookie_secret() == first  # read back, not replaced
    value = session_cookie.sign("token", dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    path.write_text("another secret that is long enough to be used here\n")
    session_cookie._secret_at.cache_clear()
    assert session_cookie.verify(value) is None  # signed with the old secret


def test_cookie_scripts_set_strict_cookies_and_clear_only_their_own(cookie_home) -> None:
    expires = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    script = session_cookie.write_script("v.1.s", expires)
    assert "chexnet_session=v.1.s; Path=/; Expires=Wed, 02 Jan 2030 03:04:05 GMT; SameSite=Strict" in script
    assert "Secure" not in script  # plain http here (localhost); https adds it
    clear = session_cookie.clear_script("v.1.s")
    assert '"chexnet_session=v.1.s"' in clear and "1970" in clear


def test_cli_lists_and_ends_sessions(sqlite_engine: Engine, fast_password_hashing: None, capsys) -> None:
    from db.__main__ import main

    with session_scope(sqlite_engine) as session:
        user = accounts.create_user(session, "tess", TEST_PASSWORD)
    first, second = _open(sqlite_engine, user.id), _open(sqlite_engine, user.id)
    url = sqlite_engine.url.render_as_string(hide_password=False)
    assert main(["--database-url", url, "sessions"]) == 0
    assert capsys.readouterr().out.count("tess") == 2
    assert main(["--database-url", url, "revoke-session", "--user", "TESS"]) == 0
    assert "Ended 2 session(s) of 'tess'." in capsys.readouterr().out
    assert _resolve(sqlite_engine, first) is None and _resolve(sqlite_engine, second) is None
    assert main(["--database-url", url, "revoke-session", "999"]) == 1
    assert "no live session with id 999" in capsys.readouterr().err
