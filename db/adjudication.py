"""Disputes and adjudication: how the readers' answers on an image compare, the Disputed queue, each
reader's answer side by side, and the image's full history.

`read_status` (db.models.ReadStatus) holds one row per image with reviews or an adjudication, rewritten
by `refresh_status` in the transaction of every save (db.reviews calls it), so the Disputed queue is one
indexed query with LIMIT whatever the number of images and reviews. The rule: the readers who did not
exclude the image differ on a finding (Present / Absent / Uncertain), or the readers differ on
excluding it; a 1-1 tie is a dispute like any other. Consensus = adjudication, else agreement; a
disputed image stays disputed until an admin adjudicates it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select, true
from sqlalchemy.orm import Session

from core.labels import FINDINGS
from db.effective import get_effective_label
from db.label_rules import EffectiveLabel, finding_states
from db.models import (
    EXCLUDE_BIT,
    Adjudication,
    Image,
    LabelEvent,
    NlpLabel,
    ReadStatus,
    Review,
    User,
    findings_in,
    findings_of,
    utcnow,
)

EXCLUDE = "exclude"  # the name of the exclusion in a list of disputed findings


def dispute_mask(ballots: Sequence[tuple[dict[str, str], bool]]) -> int:
    """disputed_mask of readers' ballots [(finding states, exclude), ...] (rule in the module doc)."""
    if len(ballots) < 2:
        return 0
    mask = EXCLUDE_BIT if len({exclude for _, exclude in ballots}) > 1 else 0
    kept = [states for states, exclude in ballots if not exclude]
    for index, finding in enumerate(FINDINGS):
        if len({states[finding] for states in kept}) > 1:
            mask |= 1 << index
    return mask


def disputed_names(mask: int) -> tuple[str, ...]:
    """The findings (then "exclude") of a disputed_mask."""
    return findings_in(mask) + ((EXCLUDE,) if mask & EXCLUDE_BIT else ())


def _status_row(session: Session, image_id: int) -> dict[str, Any] | None:
    reviews = list(session.scalars(select(Review).where(Review.image_id == image_id)))
    adjudication = session.scalars(select(Adjudication).where(Adjudication.image_id == image_id)).first()
    if not reviews and adjudication is None:
        return None
    mask = dispute_mask([(finding_states(review), bool(review.exclude)) for review in reviews])
    if adjudication is not None:
        uncertain = int(adjudication.uncertain_mask or 0)
    else:
        kept = [int(r.uncertain_mask or 0) for r in reviews if not r.exclude]
        uncertain = 0
        if kept:
            uncertain = kept[0]
            for value in kept[1:]:
                uncertain &= value  # Uncertain where every reader said so (else it is a dispute)
    return {
        "image_id": image_id,
        "n_reads": len(reviews),
        "n_blinded": sum(1 for review in reviews if review.blinded),
        "disputed_mask": mask,
        "adjudicated": adjudication is not None,
        "open_dispute": bool(mask) and adjudication is None,
        "uncertain_mask": uncertain,
        "updated_at": utcnow(),
    }


def refresh_status(session: Session, image_id: int) -> None:
    """Rewrite the image's read_status row from its reviews and adjudication (caller's transaction)."""
    session.flush()
    session.execute(delete(ReadStatus).where(ReadStatus.image_id == image_id))
    row = _status_row(session, image_id)
    if row is not None:
        session.execute(insert(ReadStatus).values(**row))


def rebuild_status(session: Session) -> int:
    """Recompute every read_status row (after bulk changes, or to repair); returns the rows written."""
    session.execute(delete(ReadStatus))
    ids = select(Review.image_id).union(select(Adjudication.image_id)).subquery()
    written = 0
    for image_id in session.scalars(select(ids.c.image_id).order_by(ids.c.image_id)):
        row = _status_row(session, int(image_id))
        if row is not None:
            session.execute(insert(ReadStatus).values(**row))
            written += 1
    return written


# ----------------------------------------------------------------------------------------------------
# Reading


def labelled(session: Session, image_id: int) -> EffectiveLabel:
    """The image's effective label with its open disputes and Uncertain findings filled in."""
    label = get_effective_label(session, image_id)
    status = session.get(ReadStatus, image_id)
    if status is None:
        return label
    disputed = disputed_names(status.disputed_mask) if status.open_dispute else ()
    uncertain = findings_in(status.uncertain_mask)
    no_finding = label.no_finding and not uncertain
    return dataclasses.replace(label, disputed=disputed, uncertain=uncertain, no_finding=no_finding)


@dataclass(frozen=True)
class DisputedItem:
    image_id: int
    name: str
    n_reads: int
    disputed: tuple[str, ...]  # findings, then "exclude"


def _disputed_select() -> Any:
    return (
        select(
            Image.id, Image.image_index, Image.original_filename, ReadStatus.n_reads, ReadStatus.disputed_mask
        )
        .join(Image, Image.id == ReadStatus.image_id)
        .where(ReadStatus.open_dispute == true())
    )


def disputed_queue(session: Session, *, limit: int = 50, after_image_id: int = 0) -> list[DisputedItem]:
    """Open disputes by image id (from `after_image_id`): one indexed query with LIMIT."""
    rows = session.execute(
        _disputed_select()
        .where(ReadStatus.image_id > after_image_id)
        .order_by(ReadStatus.image_id)
        .limit(limit)
    )
    return [
        DisputedItem(image_id, index or filename or f"image #{image_id}", int(n), disputed_names(int(mask)))
        for image_id, index, filename, n, mask in rows
    ]


def disputed_count(session: Session) -> int:
    statement = select(func.count()).select_from(ReadStatus).where(ReadStatus.open_dispute == true())
    return int(session.scalar(statement) or 0)


@dataclass(frozen=True)
class ReaderAnswer:
    username: str
    states: dict[str, str]  # finding -> "present" | "absent" | "uncertain"
    reasons: dict[str, list[str]]
    no_finding: bool
    exclude: bool
    comment: str
    blinded: bool
    study_mode: str
    read_seconds: float | None
    updated_at: Any
    version: int


def reader_answers(session: Session, image_id: int) -> list[ReaderAnswer]:
    """Every reader's answer on the image, oldest review first (for the adjudicator)."""
    rows = session.execute(
        select(Review, User.username).join(User, User.id == Review.user_id).where(Review.image_id == image_id)
        .order_by(Review.created_at, Review.id)
    )  # fmt: skip
    return [
        ReaderAnswer(
            username=username,
            states=finding_states(review),
            reasons=dict(review.reasons or {}),
            no_finding=bool(review.no_finding),
            exclude=bool(review.exclude),
            comment=review.comment or "",
            blinded=bool(review.blinded),
            study_mode=review.study_mode or "",
            read_seconds=review.read_seconds,
            updated_at=review.updated_at,
            version=review.version,
        )
        for review, username in rows
    ]


def nlp_findings(session: Session, image_id: int) -> dict[str, bool] | None:
    row = session.scalars(
        select(NlpLabel).where(NlpLabel.image_id == image_id, NlpLabel.source == "nlp")
    ).one_or_none()
    return None if row is None else {f: bool(v) for f, v in findings_of(row).items()}


@dataclass(frozen=True)
class HistoryEntry:
    at: Any
    username: str
    kind: str  # "review" | "adjudication"
    version: int
    change: str  # "created: Effusion present" / "Mass: present → absent; comment changed"
    reason: str


def _state_words(state: dict[str, Any]) -> dict[str, str]:
    """finding -> state of an audit snapshot, plus no_finding / exclude / comment as words."""
    uncertain = set(state.get("uncertain") or ())
    words = {
        finding: "uncertain" if finding in uncertain else "present" if present else "absent"
        for finding, present in (state.get("findings") or {}).items()
    }
    words["No Finding"] = "yes" if state.get("no_finding") else "no"
    words["Exclude"] = "yes" if state.get("exclude") else "no"
    return words


def change_text(before: dict[str, Any] | None, after: dict[str, Any]) -> str:
    """What a label event changed, in words (user strings are not included: comments only "changed")."""
    new = _state_words(after)
    if before is None:
        present = [f for f in FINDINGS if new.get(f) == "present"]
        uncertain = [f for f in FINDINGS if new.get(f) == "uncertain"]
        parts = [", ".join(present) + " present"] if present else []
        parts += [", ".join(uncertain) + " uncertain"] if uncertain else []
        if new["No Finding"] == "yes":
            parts.append("No Finding")
        if new["Exclude"] == "yes":
            parts.append("excluded")
        return "created: " + ("; ".join(parts) or "nothing marked")
    old = _state_words(before)
    parts = [
        f"{name}: {old.get(name, '?')} → {value}" for name, value in new.items() if old.get(name) != value
    ]
    if (before.get("comment") or "") != (after.get("comment") or ""):
        parts.append("comment changed")
    if (before.get("reasons") or {}) != (after.get("reasons") or {}):
        parts.append("reason codes changed")
    return "; ".join(parts) or "no change"


def image_history(session: Session, image_id: int) -> list[HistoryEntry]:
    """Every label event of the image, oldest first, with who made it and what it changed."""
    rows = session.execute(
        select(LabelEvent, User.username).join(User, User.id == LabelEvent.user_id)
        .where(LabelEvent.image_id == image_id).order_by(LabelEvent.id)
    )  # fmt: skip
    return [
        HistoryEntry(event.at, username, event.kind, event.version, change_text(event.before, event.after),
                     event.comment or "")
        for event, username in rows
    ]  # fmt: skip
