"""The reading study's tables (issue 11): study settings, assignments, per-image read status, heat-map
feedback, and the OOD gate's suggested exclusions. Part of the schema of db.models, which imports them."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Float, ForeignKey, Index, SmallInteger, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from db.base import Base, utcnow


class StudySetting(Base):
    """One study-wide setting (db.study): blinding, the study mode (AI-first / AI-hidden)."""

    __tablename__ = "study_settings"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[dict[str, Any]]
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))


class Assignment(Base):
    """An image a reader is asked to read (db.assignments). `read_number` 1 is the first read, 2 the
    second (always another reader); `done_at` is set when the reader saves a review of the image."""

    __tablename__ = "assignments"
    __table_args__ = (
        UniqueConstraint("image_id", "user_id"),
        # "My assignments": a reader's open ones in order, and the progress counts, from this index.
        Index("ix_assignments_user_id_done_at_id", "user_id", "done_at", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    read_number: Mapped[int] = mapped_column(SmallInteger, default=1)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    done_at: Mapped[dt.datetime | None]


class ReadStatus(Base):
    """Derived, one row per image with reviews or an adjudication (db.adjudication keeps it current in
    the transaction of every save): how the readers' answers compare.

    `disputed_mask`: bit i set when the readers who did not exclude the image differ on FINDINGS[i]
    (Present / Absent / Uncertain), bit 14 (EXCLUDE_BIT) when they differ on excluding it; a 1-1 tie is
    a dispute. `open_dispute`: disputed and not adjudicated, what the Disputed queue lists.
    `uncertain_mask`: the findings whose effective state is Uncertain (the adjudication's, else those
    every reader marked Uncertain).
    """

    __tablename__ = "read_status"
    __table_args__ = (Index("ix_read_status_open_dispute_image_id", "open_dispute", "image_id"),)

    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    n_reads: Mapped[int]
    n_blinded: Mapped[int]
    disputed_mask: Mapped[int]
    adjudicated: Mapped[bool]
    open_dispute: Mapped[bool]
    uncertain_mask: Mapped[int]
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class CamFeedback(Base):
    """A reader's verdict on a model's heat map for one finding of an image: does it point at it?"""

    __tablename__ = "cam_feedback"
    __table_args__ = (
        UniqueConstraint("image_id", "user_id", "model_name", "finding"),
        Index("ix_cam_feedback_model_name", "model_name"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    model_name: Mapped[str] = mapped_column(String(128))  # the model the page showed (a version's name)
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id", ondelete="SET NULL"))
    finding: Mapped[str] = mapped_column(String(32))
    points_at_finding: Mapped[bool]
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class OodSuspect(Base):
    """An imported image that a version's OOD gate flagged, listed for review as a suggested exclusion."""

    __tablename__ = "ood_suspects"
    __table_args__ = (
        UniqueConstraint("image_id", "model_version_id"),
        # The page lists one version's suspects, most suspicious first, and counts them per check.
        Index("ix_ood_suspects_model_version_id_kind_score", "model_version_id", "kind", "score"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("training_jobs.id", ondelete="SET NULL"))
    kind: Mapped[str] = mapped_column(String(16))  # which check fired (`check` is an SQL keyword)
    reason: Mapped[str] = mapped_column(Text)
    score: Mapped[float] = mapped_column(Float)  # the gate's distance score (limit = 1); 0.0 without one
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
