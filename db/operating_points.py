"""Admin-set operating points: a version's threshold for one finding, with who set it and why.

The table is append-only: setting a point adds a row, and the latest row of a (version, finding) is the
one in use; the earlier ones are its history. A finding without a row keeps the model card's threshold
(how that one was chosen is in the card). The Predict page applies the points of the version it serves
(webapp.active_model), the Models & ROC page sets them (webapp.operating_points_section).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.labels import FINDINGS
from db.errors import DbUserError, NotFoundError
from db.models import ModelVersion, OperatingPointRecord, User, utcnow


class OperatingPointError(DbUserError, ValueError):
    """An operating point that cannot be set as asked (one human sentence)."""


@dataclass(frozen=True)
class OperatingPoint:
    finding: str
    threshold: float
    reason: str  # as the admin typed it: plain text wherever it is shown
    set_by: str | None  # the admin's username; None when set from the command line
    created_at: dt.datetime


def _checked_threshold(threshold: object) -> float:
    try:
        value = float(threshold)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise OperatingPointError(
            f"A threshold must be a number between 0 and 1, not {threshold!r}."
        ) from None
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise OperatingPointError(f"A threshold must be between 0 and 1; {threshold!r} is not.")
    return value


def set_operating_point(
    session: Session, version_id: int, finding: str, threshold: float, reason: str, by_user: User | None
) -> OperatingPoint:
    """Record `threshold` as the version's operating point for `finding` (it replaces the current one,
    which stays in the history). Raises OperatingPointError or NotFoundError, each one sentence."""
    if finding not in FINDINGS:
        raise OperatingPointError(
            f"{finding!r} is not one of the {len(FINDINGS)} findings ({', '.join(FINDINGS)})."
        )
    value = _checked_threshold(threshold)
    if not isinstance(reason, str) or not reason.strip():
        raise OperatingPointError("Say why this threshold is set: the reason is required.")
    version = session.get(ModelVersion, version_id)
    if version is None:
        raise NotFoundError(f"There is no model version with id {version_id}.")
    row = OperatingPointRecord(
        model_version_id=version.id,
        finding=finding,
        threshold=value,
        reason=reason,
        set_by_id=by_user.id if by_user is not None else None,
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return OperatingPoint(finding, value, reason, by_user.username if by_user else None, row.created_at)


def _points(session: Session, version_id: int, *, current_only: bool) -> list[OperatingPoint]:
    record = OperatingPointRecord
    statement = (
        select(record.finding, record.threshold, record.reason, User.username, record.created_at)
        .outerjoin(User, User.id == record.set_by_id)
        .where(record.model_version_id == version_id)
        .order_by(record.id.desc())
    )
    if current_only:
        latest = (
            select(func.max(record.id)).where(record.model_version_id == version_id).group_by(record.finding)
        )
        statement = statement.where(record.id.in_(latest))
    return [OperatingPoint(*row) for row in session.execute(statement)]


def current_operating_points(session: Session, version_id: int) -> dict[str, OperatingPoint]:
    """{finding: the point in use} of the findings an admin has set for the version, in FINDINGS order
    (one query; findings without a row keep the model card's threshold)."""
    points = {point.finding: point for point in _points(session, version_id, current_only=True)}
    return {finding: points[finding] for finding in FINDINGS if finding in points}


def history(session: Session, version_id: int) -> list[OperatingPoint]:
    """Every point set for the version, newest first (one query)."""
    return _points(session, version_id, current_only=False)
