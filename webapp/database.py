"""The UI's way into the database: one engine per process, login, and the first-start admin account.

Pages call `engine()` (or `session()`), never `db.engine.get_engine` directly, so that the first page a
process serves also creates the initial admin account and prints its password on the console once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import streamlit as st
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from db import accounts
from db.engine import default_url, get_engine, session_scope

log = logging.getLogger(__name__)

UNREACHABLE_SENTENCE = (
    "The database cannot be reached right now ({detail}); try again in a moment or ask an admin."
)


@st.cache_resource(show_spinner=False, max_entries=8)
def _engine_for(url: str) -> Engine:
    # Cached per process and URL: the migration check and the admin bootstrap run once, not per rerun.
    engine = get_engine(url)
    password = accounts.ensure_initial_admin(engine)
    if password:
        _announce_initial_admin(password)
    return engine


def _announce_initial_admin(password: str) -> None:
    """Print the generated admin password once; it is stored only as a hash and cannot be shown again."""
    rule = "=" * 72
    print(
        f"\n{rule}\nCheXNet Studio: created the first account.\n"
        f"  username: {accounts.INITIAL_ADMIN_USERNAME}\n  password: {password}\n"
        f"It is shown only this once. Log in and keep it safe "
        f"(or set ${accounts.ADMIN_PASSWORD_ENV} before the first start).\n{rule}\n",
        flush=True,
    )


def engine() -> Engine:
    """The database of this process ($DATABASE_URL, else SQLite under CHEXNET_HOME)."""
    return _engine_for(default_url())


@contextmanager
def session(*, read_only: bool = False) -> Iterator[Session]:
    """A transaction on the app's database: commits when the block ends, rolls back on an exception."""
    with session_scope(engine(), read_only=read_only) as db_session:
        yield db_session


def unreachable_sentence(error: Exception) -> str:
    detail = type(getattr(error, "orig", None) or error).__name__
    return UNREACHABLE_SENTENCE.format(detail=detail)


def engine_or_stop() -> Engine:
    """The engine, or an error sentence on the page and a stopped script when the database is down."""
    try:
        return engine()
    except SQLAlchemyError as exc:
        log.exception("The database cannot be opened.")
        st.error(unreachable_sentence(exc))
        st.stop()
        raise  # st.stop() raises; this line only tells type checkers so


def authenticate_user(username: str, password: str) -> tuple[dict[str, Any] | None, str]:
    """({"id", "username", "role"}, "") for a valid active account, else (None, a sentence saying why)."""
    if not username or not password:
        return None, "Enter your username and password."
    try:
        with session() as db_session:
            user = accounts.authenticate(db_session, username, password)
            if user is None:
                # One sentence for unknown users, wrong passwords and deactivated accounts alike.
                return None, "The username or password is not correct, or the account is deactivated."
            return {"id": user.id, "username": user.username, "role": user.role}, ""
    except SQLAlchemyError as exc:
        log.exception("Login failed on a database error.")
        return None, unreachable_sentence(exc)
