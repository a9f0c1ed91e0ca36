"""Suggested exclusions: imported images a model's out-of-distribution gate flagged (jobs.screen).

A suspect is a suggestion for reviewers, never an action: the image stays imported, in its split and in
every queue; only a reader's or an admin's "Exclude" leaves it out of training. One row per (image, model
version); screening an image again replaces its row (or deletes it when the image now passes), so a
cancelled screening leaves the images it reached up to date and the others as they were.

`kind` says which check fired (core.ood.gate: uniform, noise, document, colour, orientation, distance), or
"unreadable" for a file the X-ray reader refused; `reason` is the sentence shown to people.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from db.models import Image, ModelVersion, OodSuspect

UNREADABLE = "unreadable"
DELETE_CHUNK = 500  # image ids per DELETE ... IN (...): well inside every backend's parameter limit


@dataclass(frozen=True)
class Flag:
    """What the gate said about one image (core.ood.gate.OodResult's check, reason and score)."""

    check: str
    reason: str
    score: float


@dataclass(frozen=True)
class SuspectRow:
    image_id: int
    image_name: str  # the NIH file name, else the upload's file name, else "image #id"
    split: str | None
    version: str
    check: str
    reason: str
    score: float
    flagged_at: dt.datetime


def record_screening(
    session: Session,
    version_id: int,
    screened: Iterable[int],
    flagged: Mapping[int, Flag],
    *,
    job_id: int | None = None,
) -> int:
    """Store the verdicts on `screened` image ids: rows for the `flagged` ones, none for the others.
    Returns how many rows were written."""
    ids = sorted(set(screened) | set(flagged))
    for start in range(0, len(ids), DELETE_CHUNK):
        session.execute(
            delete(OodSuspect).where(
                OodSuspect.model_version_id == version_id,
                OodSuspect.image_id.in_(ids[start : start + DELETE_CHUNK]),
            )
        )
    session.add_all(
        OodSuspect(
            image_id=image_id,
            model_version_id=version_id,
            job_id=job_id,
            kind=flag.check,
            reason=flag.reason,
            score=float(flag.score),
        )
        for image_id, flag in flagged.items()
    )
    session.flush()
    return len(flagged)


def _rows(session: Session, statement) -> list[SuspectRow]:
    return [
        SuspectRow(
            image_id=row.image_id,
            image_name=row.image_index or row.original_filename or f"image #{row.image_id}",
            split=row.split,
            version=row.name,
            check=row.kind,
            reason=row.reason,
            score=float(row.score),
            flagged_at=row.created_at,
        )
        for row in session.execute(statement)
    ]


def _select():
    return (
        select(
            OodSuspect.image_id,
            OodSuspect.kind,
            OodSuspect.reason,
            OodSuspect.score,
            OodSuspect.created_at,
            Image.image_index,
            Image.original_filename,
            Image.split,
            ModelVersion.name,
        )
        .join(Image, Image.id == OodSuspect.image_id)
        .join(ModelVersion, ModelVersion.id == OodSuspect.model_version_id)
    )


def list_suspects(
    session: Session, version_id: int, *, check: str | None = None, limit: int = 200, offset: int = 0
) -> list[SuspectRow]:
    """One version's suspects (optionally of one check), by check, then most suspicious first; a page."""
    statement = _select().where(OodSuspect.model_version_id == version_id)
    if check is not None:
        statement = statement.where(OodSuspect.kind == check)
    statement = statement.order_by(OodSuspect.kind, OodSuspect.score.desc(), OodSuspect.image_id)
    return _rows(session, statement.limit(limit).offset(offset))


def suspect_counts(session: Session, version_id: int) -> dict[str, int]:
    """{check: number of suspects} of one version, counted in SQL."""
    statement = (
        select(OodSuspect.kind, func.count())
        .where(OodSuspect.model_version_id == version_id)
        .group_by(OodSuspect.kind)
        .order_by(OodSuspect.kind)
    )
    return {kind: int(n) for kind, n in session.execute(statement)}


def screened_versions(session: Session) -> list[tuple[int, str, int]]:
    """(version id, name, number of suspects) of every version with suspects, newest version first."""
    statement = (
        select(ModelVersion.id, ModelVersion.name, func.count(OodSuspect.id))
        .join(OodSuspect, OodSuspect.model_version_id == ModelVersion.id)
        .group_by(ModelVersion.id, ModelVersion.name)
        .order_by(ModelVersion.id.desc())
    )
    return [(int(i), name, int(n)) for i, name, n in session.execute(statement)]


def suspects_of_image(session: Session, image_id: int) -> list[SuspectRow]:
    """Every version's flag on one image (for a review page's "suggested exclusion" note)."""
    statement = _select().where(OodSuspect.image_id == image_id).order_by(OodSuspect.model_version_id)
    return _rows(session, statement)
