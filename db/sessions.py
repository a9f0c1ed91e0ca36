"""Login sessions: a random token per login, of which the database keeps only the sha256.

    token, expires = create_session(session, user_id, client_ip="10.0.0.7", user_agent="Firefox ...")
    active = resolve_session(session, token)      # ActiveSession, or None: unknown, revoked, idle, expired
    if active and active.due_for_touch(): touch_session(session, active.session_id)
    revoke_session(session, token)                # logout: every tab holding it is logged out on its next run

A session ends when revoked, after IDLE_TIMEOUT without use, at its absolute expiry (SESSION_LIFETIME
after the login), or when its account is deactivated; the account's role is read anew on every
resolve, so a demotion applies at the next page run.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db.models import User, UserSession, utcnow

IDLE_TIMEOUT = dt.timedelta(minutes=30)
SESSION_LIFETIME = dt.timedelta(hours=12)
# last_seen_at is written at most this often, so most page runs only read.
TOUCH_INTERVAL = dt.timedelta(minutes=1)
TOKEN_BYTES = 32


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ActiveSession:
    session_id: int
    user_id: int
    username: str
    role: str
    expires_at: dt.datetime
    last_seen_at: dt.datetime

    def due_for_touch(self, now: dt.datetime | None = None) -> bool:
        return (now or utcnow()) - self.last_seen_at >= TOUCH_INTERVAL


@dataclass(frozen=True)
class SessionRow:
    """One session as the admin page lists it."""

    id: int
    username: str
    created_at: dt.datetime
    last_seen_at: dt.datetime
    expires_at: dt.datetime
    client_ip: str
    user_agent: str


def create_session(
    session: Session,
    user_id: int,
    *,
    client_ip: str = "",
    user_agent: str = "",
    now: dt.datetime | None = None,
) -> tuple[str, dt.datetime]:
    """(token, expiry) of a new session; the caller's transaction stores it."""
    now = now or utcnow()
    token = secrets.token_urlsafe(TOKEN_BYTES)
    expires = now + SESSION_LIFETIME
    session.add(
        UserSession(
            token_sha256=token_digest(token),
            user_id=user_id,
            created_at=now,
            last_seen_at=now,
            expires_at=expires,
            client_ip=(client_ip or "")[:64],
            user_agent=(user_agent or "")[:255],
        )
    )
    session.flush()
    return token, expires


def _is_live(row: UserSession, now: dt.datetime) -> bool:
    return row.revoked_at is None and now < row.expires_at and now - row.last_seen_at < IDLE_TIMEOUT


def resolve_session(session: Session, token: str, now: dt.datetime | None = None) -> ActiveSession | None:
    """The live session of this token with its account's current role, or None. Only reads, so a
    read-only transaction will do; `touch_session` records the use when `ActiveSession.due_for_touch`."""
    if not token:
        return None
    now = now or utcnow()
    found = session.execute(
        select(UserSession, User)
        .join(User, User.id == UserSession.user_id)
        .where(UserSession.token_sha256 == token_digest(token))
    ).one_or_none()
    if found is None:
        return None
    row, user = found
    if not _is_live(row, now) or not user.active:
        return None
    return ActiveSession(row.id, user.id, user.username, user.role, row.expires_at, row.last_seen_at)


def touch_session(session: Session, session_id: int, now: dt.datetime | None = None) -> None:
    """Record a use of the session (what the idle timeout counts from)."""
    session.execute(
        update(UserSession).where(UserSession.id == session_id).values(last_seen_at=now or utcnow())
    )


def revoke_session(session: Session, token: str) -> bool:
    """End the session of this token (logout). True when a live one was ended."""
    result = session.execute(
        update(UserSession)
        .where(UserSession.token_sha256 == token_digest(token), UserSession.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    return bool(result.rowcount)


def revoke_session_id(session: Session, session_id: int) -> bool:
    result = session.execute(
        update(UserSession)
        .where(UserSession.id == session_id, UserSession.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    return bool(result.rowcount)


def revoke_user_sessions(session: Session, user_id: int, *, keep_token: str | None = None) -> int:
    """End every session of an account (deactivation, password change), except `keep_token`'s."""
    statement = update(UserSession).where(UserSession.user_id == user_id, UserSession.revoked_at.is_(None))
    if keep_token:
        statement = statement.where(UserSession.token_sha256 != token_digest(keep_token))
    return int(session.execute(statement.values(revoked_at=utcnow())).rowcount or 0)


def list_live_sessions(session: Session, now: dt.datetime | None = None) -> list[SessionRow]:
    """Sessions that are not revoked, idle or expired, newest use first."""
    now = now or utcnow()
    rows = session.execute(
        select(UserSession, User.username)
        .join(User, User.id == UserSession.user_id)
        .where(
            UserSession.revoked_at.is_(None),
            UserSession.expires_at > now,
            UserSession.last_seen_at > now - IDLE_TIMEOUT,
            User.active.is_(True),
        )
        .order_by(UserSession.last_seen_at.desc())
    ).all()
    return [
        SessionRow(r.id, username, r.created_at, r.last_seen_at, r.expires_at, r.client_ip, r.user_agent)
        for r, username in rows
    ]
