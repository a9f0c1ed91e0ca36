"""Readers' feedback on the model's heat maps: for a finding of an image, does the CAM point at it?

One answer per (image, reader, model, finding); answering again replaces it. `agreement_by_model`
aggregates in SQL, per model (the version name the page showed) and finding.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from core.labels import FINDINGS
from db.errors import InvalidLabelError
from db.models import CamFeedback, ModelVersion, User, utcnow


def save_cam_feedback(
    session: Session, image_id: int, user: User, model_name: str, finding: str, points_at_finding: bool
) -> CamFeedback:
    """Record (or change) the reader's verdict on the model's heat map of `finding` on the image."""
    if finding not in FINDINGS:
        raise InvalidLabelError(f"Unknown finding {finding!r}.")
    version_id = session.scalar(select(ModelVersion.id).where(ModelVersion.name == model_name))
    row = session.scalars(
        select(CamFeedback).where(
            CamFeedback.image_id == image_id,
            CamFeedback.user_id == user.id,
            CamFeedback.model_name == model_name,
            CamFeedback.finding == finding,
        )
    ).one_or_none()
    if row is None:
        row = CamFeedback(image_id=image_id, user_id=user.id, model_name=model_name, finding=finding)
        session.add(row)
    row.points_at_finding, row.model_version_id, row.at = bool(points_at_finding), version_id, utcnow()
    session.flush()
    return row


def feedback_of(session: Session, image_id: int, user_id: int, model_name: str) -> dict[str, bool]:
    """finding -> the reader's verdict so far on this image and model."""
    rows = session.execute(
        select(CamFeedback.finding, CamFeedback.points_at_finding).where(
            CamFeedback.image_id == image_id,
            CamFeedback.user_id == user_id,
            CamFeedback.model_name == model_name,
        )
    )
    return {finding: bool(points) for finding, points in rows}


@dataclass(frozen=True)
class CamAgreement:
    model_name: str
    finding: str | None  # None: every finding together
    n: int
    points_at_finding: int

    @property
    def share(self) -> float | None:
        return self.points_at_finding / self.n if self.n else None


def agreement_by_model(session: Session) -> list[CamAgreement]:
    """Per model and finding, and per model overall: verdicts and how many said "points at it"."""
    hits = func.coalesce(func.sum(case((CamFeedback.points_at_finding, 1), else_=0)), 0)
    per_finding = session.execute(
        select(CamFeedback.model_name, CamFeedback.finding, func.count(), hits)
        .group_by(CamFeedback.model_name, CamFeedback.finding)
        .order_by(CamFeedback.model_name, CamFeedback.finding)
    ).all()
    totals: dict[str, list[int]] = {}
    rows = []
    for model_name, finding, n, hit in per_finding:
        rows.append(CamAgreement(model_name, finding, int(n), int(hit)))
        total = totals.setdefault(model_name, [0, 0])
        total[0] += int(n)
        total[1] += int(hit)
    rows += [CamAgreement(name, None, n, hit) for name, (n, hit) in sorted(totals.items())]
    return rows
