"""The UI's way into the database: one engine per process, login, and the first-start admin account.

Pages call `engine()` (or `session()`), never `db.engine.get_engine` directly, so that the first page a
process serves also creates the initial admin account (its password goes to a private file under
CHEXNET_HOME; the console says where). `outage_guard()` turns a database outage during a page run into
one sentence, and any other unexpected error into a sentence with a reference to the logged traceback.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import streamlit as st
from sqlalchemy import Engine
from sqlalchemy.exc import (
    DisconnectionError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as SqlAlchemyTimeoutError
from sqlalchemy.orm import Session
from streamlit.runtime.scriptrunner import get_script_run_ctx

from core.errors import UserError
from db import accounts
from db.engine import default_url, get_engine, session_scope

log = logging.getLogger(__name__)

UNREACHABLE_SENTENCE = (
    "The database cannot be reached right now ({detail}); try again in a moment or ask an admin."
)
UNEXPECTED_SENTENCE = (
    "This page stopped on an unexpected problem. Reload to try again; if it happens again, tell an admin "
    "the reference {reference} (the details are in the server log)."
)
UNEXPECTED_LOG_MESSAGE = "Unexpected error during a page run"


@st.cache_resource(show_spinner=False, max_entries=8)
def _engine_for(url: str) -> Engine:
    # Cached per process and URL: the migration check and the admin bootstrap run once, not per rerun.
    # An exception (database down at start) is not cached: the next run tries again.
    engine = get_engine(url)
    password_file = accounts.ensure_initial_admin(engine)
    if password_file:
        _announce_initial_admin(password_file)
    return engine


def _announce_initial_admin(password_file: Path) -> None:
    """Say where the generated admin password is; never the password (console logs are kept)."""
    rule = "=" * 72
    print(
        f"\n{rule}\nCheXNet Studio: created the first account, {accounts.INITIAL_ADMIN_USERNAME!r}.\n"
        f"Its password is in {password_file} (readable only by this user).\n"
        f"Log in, change it on the Change password page, and the file is deleted "
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


DISK_FULL_SENTENCE = (
    "The database's disk is full, so nothing was saved; ask an admin to free space, then try again."
)


def unreachable_sentence(error: Exception) -> str:
    cause = getattr(error, "orig", None) or error
    message = str(cause).lower()
    if "disk is full" in message or "no space left" in message or type(cause).__name__ == "DiskFull":
        return DISK_FULL_SENTENCE
    return UNREACHABLE_SENTENCE.format(detail=type(cause).__name__)


def engine_or_stop() -> Engine:
    """The engine, or an error sentence on the page and a stopped script when the database is down."""
    try:
        return engine()
    except SQLAlchemyError as exc:
        log.warning("The database cannot be opened: %s", _one_line(exc))
        st.error(unreachable_sentence(exc))
        st.stop()
        raise  # st.stop() raises; this line only tells type checkers so


def _text(value: object) -> str:
    # Only real strings: where no browser is connected (AppTest), st.context holds stand-in objects.
    return value.strip() if isinstance(value, str) else ""


def _client() -> accounts.LoginClient:
    """Where this browser connects from: its address, a proxy's forwarded one, else this tab's session."""
    headers = st.context.headers
    address = _text(st.context.ip_address)
    if not address:  # a local connection, perhaps a reverse proxy on the same machine
        forwarded = _text(headers.get("X-Forwarded-For")) or _text(headers.get("X-Real-Ip"))
        address = forwarded.split(",")[0].strip()
    if not address:
        ctx = get_script_run_ctx()
        address = f"session:{ctx.session_id}" if ctx is not None else "unknown"
    return accounts.LoginClient(address=address[:128], user_agent=_text(headers.get("User-Agent"))[:255])


def attempt_login(username: str, password: str) -> accounts.LoginResult:
    """A throttled, recorded login (db.accounts.log_in) from this browser; a sentence on any failure."""
    try:
        return accounts.log_in(engine(), username, password, _client())
    except SQLAlchemyError as exc:
        log.warning("Login failed on a database error: %s", _one_line(exc))
        return accounts.LoginResult(None, None, unreachable_sentence(exc))


# Errors that mean "the database is not there right now" (down, restarting, disk full, pool exhausted),
# as opposed to a bug: those are shown as one sentence and the next run simply tries again.
OUTAGE_ERRORS = (OperationalError, InterfaceError, DisconnectionError, SqlAlchemyTimeoutError)


def _one_line(error: BaseException) -> str:
    text = str(getattr(error, "orig", None) or error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__


@contextmanager
def outage_guard() -> Iterator[None]:
    """Show UNREACHABLE_SENTENCE instead of Streamlit's error box when the database fails in the block
    (and any UserError's own sentence).

    The entry point wraps every page run in it; the next run (a click, a reload) simply tries again.
    """
    try:
        yield
    except OUTAGE_ERRORS as exc:
        log.warning("Database unreachable during a page run: %s", _one_line(exc))  # one line, no traceback
        st.error(unreachable_sentence(exc), icon=":material/cloud_off:")
    except UserError as exc:  # a sentence meant for people that no page caught (e.g. a bad setting)
        st.error(str(exc))
    except Exception:  # a bug: the traceback goes to the server log, the page says one sentence
        reference = uuid.uuid4().hex[:8]
        log.exception("%s (reference %s)", UNEXPECTED_LOG_MESSAGE, reference)
        st.error(UNEXPECTED_SENTENCE.format(reference=reference), icon=":material/bug_report:")
