"""Login throttling: exponential backoff per username and per client, from the `login_attempts` table.

A username gets USERNAME_FREE_FAILURES failed logins (since its last success, within FAILURE_WINDOW);
each further failure doubles the wait before the next try: 1, 2, 4 ... minutes, at most MAX_WAIT.
A client (address, else browser session) gets CLIENT_FREE_FAILURES failures over all usernames in the
window, so trying many names from one place is slowed down too. Unknown usernames count like real
ones (the table stores the name typed), so the answer never tells which accounts exist.
Throttled attempts are refused before the password is checked and are not stored.
"""

from __future__ import annotations

import datetime as dt
import math

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from db.models import LoginAttempt, utcnow

USERNAME_FREE_FAILURES = 5
CLIENT_FREE_FAILURES = 20
FIRST_WAIT = dt.timedelta(minutes=1)
MAX_WAIT = dt.timedelta(hours=1)
FAILURE_WINDOW = dt.timedelta(days=1)
KEEP_ATTEMPTS = dt.timedelta(days=90)  # older rows are pruned now and then (see record_attempt)
MAX_KEY_LENGTH = 64
MAX_CLIENT_LENGTH = 128


def backoff(failures: int, free: int) -> dt.timedelta:
    """The wait after `failures` failures when `free` of them cost nothing."""
    if failures < free:
        return dt.timedelta(0)
    doublings = min(failures - free, 20)  # 2**20 minutes is far past MAX_WAIT already
    return min(FIRST_WAIT * (2**doublings), MAX_WAIT)


def _wait_for(
    session: Session, column, key: str, free: int, since: dt.datetime, now: dt.datetime
) -> dt.timedelta:
    failures, last_failure = session.execute(
        select(func.count(), func.max(LoginAttempt.at)).where(
            column == key, LoginAttempt.at > since, LoginAttempt.succeeded.is_(False)
        )
    ).one()
    if not failures or last_failure is None:
        return dt.timedelta(0)
    remaining = last_failure + backoff(int(failures), free) - now
    return max(remaining, dt.timedelta(0))


def throttle_wait(
    session: Session, username_key: str, client: str, now: dt.datetime | None = None
) -> dt.timedelta:
    """How long this username / client must wait before its next login is checked (0: not at all)."""
    now = now or utcnow()
    window_start = now - FAILURE_WINDOW
    last_success = session.scalar(
        select(func.max(LoginAttempt.at)).where(
            LoginAttempt.username_key == username_key[:MAX_KEY_LENGTH], LoginAttempt.succeeded.is_(True)
        )
    )
    since = max(window_start, last_success) if last_success else window_start
    by_name = _wait_for(
        session, LoginAttempt.username_key, username_key[:MAX_KEY_LENGTH], USERNAME_FREE_FAILURES, since, now
    )
    by_client = _wait_for(
        session, LoginAttempt.client, client[:MAX_CLIENT_LENGTH], CLIENT_FREE_FAILURES, window_start, now
    )
    return max(by_name, by_client)


def wait_sentence(wait: dt.timedelta) -> str:
    minutes = max(1, math.ceil(wait.total_seconds() / 60))
    return f"Too many failed attempts; try again in {minutes} minute{'s' if minutes != 1 else ''}."


def record_attempt(session: Session, username_key: str, client: str, succeeded: bool) -> None:
    session.add(
        LoginAttempt(
            username_key=username_key[:MAX_KEY_LENGTH], client=client[:MAX_CLIENT_LENGTH], succeeded=succeeded
        )
    )
    session.flush()
    if session.scalar(select(func.max(LoginAttempt.id))) % 1000 == 0:  # now and then, not on every login
        session.execute(delete(LoginAttempt).where(LoginAttempt.at < utcnow() - KEEP_ATTEMPTS))
