"""Who is logged in: a server-side session (db.sessions) found through this tab's state or the cookie.

Every page run re-reads the session and the account from the database (`refresh_session`, called by
the entry point and by `require_role`): a revoked, idle or expired session, or a deactivated account,
is logged out at its next run, and a changed role applies at once. Pages call `require_role(...)`
first; inside an `st.fragment` or a widget callback that does something privileged, call it again
(those runs skip the page's top), or check in the action's transaction with
`db.accounts.require_active_role`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import streamlit as st
from streamlit.errors import StreamlitPageNotFoundError

from db import accounts, sessions
from webapp import database, session_cookie

SESSION_KEY = "user"
TOKEN_KEY = "auth_token"
_COOKIE_VALUE_KEY = "auth_cookie_value"  # the signed cookie of this tab's token
_PENDING_KEY = "auth_cookie_script"  # {"script": str, "runs_left": int}: what to run in the browser
_REJECTED_KEY = "auth_rejected_cookie"  # a cookie token found dead once is not looked up again
_COOKIE_RUNS = 3  # runs that carry a cookie write: enough for one of them to reach the browser


@dataclass(frozen=True)
class SessionUser:
    id: int
    username: str
    role: str  # "clinician" | "admin"


def current_user() -> SessionUser | None:
    """The user this run acts for, as of the last `refresh_session` (no database access)."""
    return st.session_state.get(SESSION_KEY)


def current_token() -> str | None:
    return st.session_state.get(TOKEN_KEY)


def _schedule_browser(script: str) -> None:
    st.session_state[_PENDING_KEY] = {"script": script, "runs_left": _COOKIE_RUNS}


def sync_cookie() -> None:
    """Run a pending cookie write or removal in the browser (the entry point calls it every run).

    Only for a few runs: a tab that logged in long ago must not overwrite a newer login's cookie.
    """
    pending = st.session_state.get(_PENDING_KEY)
    if not pending:
        return
    session_cookie.run_in_browser(pending["script"])
    pending["runs_left"] -= 1
    if pending["runs_left"] <= 0:
        st.session_state.pop(_PENDING_KEY, None)


def _forget() -> None:
    """Log this tab out and remove its cookie from the browser (unless a newer login replaced it)."""
    st.session_state.pop(TOKEN_KEY, None)
    st.session_state.pop(SESSION_KEY, None)
    value = st.session_state.pop(_COOKIE_VALUE_KEY, None)
    if value:
        _schedule_browser(session_cookie.clear_script(value))


def _refresh_without_token(user: SessionUser) -> SessionUser | None:
    # A user set without a token (a test of one page): the account is still read anew.
    with database.session(read_only=True) as db_session:
        account = accounts.get_account(db_session, user.id)
    if account is None or not account.active:
        st.session_state.pop(SESSION_KEY, None)
        return None
    st.session_state[SESSION_KEY] = SessionUser(account.id, account.username, account.role)
    return st.session_state[SESSION_KEY]


def refresh_session() -> SessionUser | None:
    """Bring this tab's user up to date with the database; returns it (None: nobody is logged in)."""
    state = st.session_state
    token = state.get(TOKEN_KEY)
    if token is None:
        if SESSION_KEY in state:
            return _refresh_without_token(state[SESSION_KEY])
        token = session_cookie.token_from_browser()  # a reload or a new tab
        if token is None or token == state.get(_REJECTED_KEY):
            return None
        state[_COOKIE_VALUE_KEY] = session_cookie.cookie_value()
    with database.session(read_only=True) as db_session:
        active = sessions.resolve_session(db_session, token)
    if active is None:  # revoked (a logout elsewhere, an admin), idle, expired, or deactivated
        state[_REJECTED_KEY] = token
        _forget()
        return None
    if active.due_for_touch():
        with database.session() as db_session:
            sessions.touch_session(db_session, active.session_id)
    state[TOKEN_KEY] = token
    state[SESSION_KEY] = SessionUser(active.user_id, active.username, active.role)
    return state[SESSION_KEY]


def log_in(result: accounts.LoginResult) -> SessionUser:
    """Adopt a successful login in this tab and have the browser keep its cookie."""
    if result.account is None or result.token is None:
        raise ValueError("log_in needs a successful LoginResult.")
    user = SessionUser(result.account.id, result.account.username, result.account.role)
    st.session_state[TOKEN_KEY] = result.token
    st.session_state[SESSION_KEY] = user
    st.session_state.pop(_REJECTED_KEY, None)
    expires = result.expires_at or dt.datetime.now(dt.UTC) + sessions.SESSION_LIFETIME
    value = session_cookie.sign(result.token, expires)
    st.session_state[_COOKIE_VALUE_KEY] = value
    _schedule_browser(session_cookie.write_script(value, expires))
    return user


def log_out() -> None:
    """End this login everywhere: the session is revoked, so other tabs holding it log out too."""
    token = current_token()
    if token:
        with database.session() as db_session:
            sessions.revoke_session(db_session, token)
        st.session_state[_REJECTED_KEY] = token  # the cookie this tab opened with may still hold it
    _forget()


def require_role(*roles: str) -> SessionUser:
    """Stop the page unless the user, as the database says now, has one of `roles`."""
    user = refresh_session()
    if user is None:
        st.warning("Please log in to see this page.")
        try:
            st.page_link("views/login.py", label="Log in", icon=":material/login:")
        except StreamlitPageNotFoundError:  # the page runs outside the app's navigation (a test of one page)
            pass
        st.stop()
    if user.role not in roles:
        st.error("Your account does not have access to this page.")
        st.stop()
    return user
