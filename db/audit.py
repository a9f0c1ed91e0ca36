"""The tamper-evident audit trail: label events chained by sha256.

Each event's `hash` is sha256 over the previous event's hash and a canonical serialization of the
event's own fields (`event_digest`). The database triggers refuse UPDATE and DELETE, but the owner of
the database can drop them; the chain still shows such an edit, because the edited event's hash (or
the next event's `prev_hash`) no longer matches. `verify_chain` walks the events in id order and
names the first broken link. Rewriting the whole tail consistently stays possible for someone with
write access, so operators may note the head hash `verify_chain` reports somewhere else (an anchor).

Appends are serialized so two transactions never chain onto the same event: on SQLite the write
transaction (BEGIN IMMEDIATE) already holds the database's write lock; on PostgreSQL a transaction
advisory lock is taken before reading the head. The unique `prev_hash` backs this up in the schema.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from db.models import LabelEvent, utcnow

GENESIS_HASH = "0" * 64  # the `prev_hash` of the first event
_PG_CHAIN_LOCK_KEY = 0x4C61624C  # "LabL": any constant, distinct from the migration lock
_VERIFY_BATCH = 5_000


def _canonical_time(value: dt.datetime) -> str:
    # Microseconds, UTC: what both backends store and give back unchanged.
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event_digest(prev_hash: str, fields: dict[str, Any]) -> str:
    """sha256 hex of `prev_hash` and the event's fields, serialized canonically (sorted keys, no spaces)."""
    payload = {
        "image_id": int(fields["image_id"]),
        "user_id": int(fields["user_id"]),
        "at": _canonical_time(fields["at"]),
        "kind": fields["kind"],
        "version": int(fields["version"]),
        "before": fields["before"],
        "after": fields["after"],
        "comment": fields["comment"] or "",
    }
    body = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256((prev_hash + "\n" + body).encode("utf-8")).hexdigest()


_HASHED_COLUMNS = ("image_id", "user_id", "at", "kind", "version", "before", "after", "comment")


def lock_audit_chain(session: Session) -> None:
    """Hold the chain's append lock until the transaction ends (re-entrant within one transaction)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_CHAIN_LOCK_KEY})
    # SQLite: the session's write transaction (BEGIN IMMEDIATE) already serializes writers.


def head_hash(session: Session) -> str:
    """The hash of the newest event (GENESIS_HASH when there is none)."""
    newest = session.scalar(select(LabelEvent.hash).order_by(LabelEvent.id.desc()).limit(1))
    return newest or GENESIS_HASH


def append_label_event(
    session: Session,
    *,
    image_id: int,
    user_id: int,
    kind: str,
    version: int,
    before: dict[str, Any] | None,
    after: dict[str, Any],
    comment: str = "",
) -> LabelEvent:
    """Add the next event of the chain in the caller's transaction (flushed, not committed)."""
    lock_audit_chain(session)
    session.flush()  # earlier events of this transaction first, so the head read below includes them
    fields = {
        "image_id": image_id,
        "user_id": user_id,
        "at": utcnow(),
        "kind": kind,
        "version": version,
        "before": before,
        "after": after,
        "comment": (comment or "").strip(),
    }
    previous = head_hash(session)
    event = LabelEvent(**fields, prev_hash=previous, hash=event_digest(previous, fields))
    session.add(event)
    session.flush()
    return event


@dataclass(frozen=True)
class ChainReport:
    checked: int  # events read before the end or the first broken link
    broken_event_id: int | None  # None: the chain is intact
    problem: str  # "" when intact, else one sentence
    head: str  # the last intact hash (GENESIS_HASH for an empty trail)

    @property
    def ok(self) -> bool:
        return self.broken_event_id is None

    def summary(self) -> str:
        if self.ok:
            return f"Audit trail OK: {self.checked:,} label events, chain head {self.head}."
        return f"Audit trail BROKEN at label event {self.broken_event_id}: {self.problem}"


def verify_chain(session: Session, progress: Callable[[int, int], None] | None = None) -> ChainReport:
    """Recompute every event's hash in id order; report the first event whose link does not hold."""
    total = int(session.scalar(select(func.count()).select_from(LabelEvent)) or 0)
    columns = [LabelEvent.id, LabelEvent.prev_hash, LabelEvent.hash]
    columns += [getattr(LabelEvent, name) for name in _HASHED_COLUMNS]
    expected_prev = GENESIS_HASH
    checked = last_id = 0
    while True:
        # Plain rows in batches (no ORM objects kept): memory stays flat over a long trail.
        rows = session.execute(
            select(*columns).where(LabelEvent.id > last_id).order_by(LabelEvent.id).limit(_VERIFY_BATCH)
        ).all()
        if not rows:
            break
        for event_id, prev_hash, stored_hash, *values in rows:
            if prev_hash != expected_prev:
                problem = (
                    "its link to the previous event does not match (an event before it was changed, "
                    "removed or inserted)."
                )
                return ChainReport(checked, event_id, problem, expected_prev)
            if event_digest(prev_hash, dict(zip(_HASHED_COLUMNS, values, strict=True))) != stored_hash:
                problem = "its stored fields no longer match its hash (the event was edited)."
                return ChainReport(checked, event_id, problem, expected_prev)
            expected_prev = stored_hash
            checked += 1
            last_id = event_id
        if progress is not None:
            progress(checked, total)
    return ChainReport(checked, None, "", expected_prev)
