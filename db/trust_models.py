"""Trust tables (issue 12): admin-set operating points and who promoted what. Both append-only
(database triggers refuse UPDATE and DELETE, see migration 0007_trust): a change is a new row. Part of
the schema of db.models, which imports them."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import CheckConstraint, Float, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from core.labels import FINDINGS
from db.base import Base, utcnow

_FINDINGS_SQL = ", ".join(f"'{finding}'" for finding in FINDINGS)


class OperatingPointRecord(Base):
    """An admin's threshold for one finding of a version (db.operating_points); the latest row of a
    (version, finding) is the one in use, the earlier ones are its history."""

    __tablename__ = "operating_points"
    __table_args__ = (
        CheckConstraint(f"finding IN ({_FINDINGS_SQL})", name="finding"),
        CheckConstraint("threshold >= 0 AND threshold <= 1", name="threshold"),
        CheckConstraint("length(reason) > 0", name="reason"),
        # The current point of each finding: max(id) per finding of one version, read from this index.
        Index("ix_operating_points_model_version_id_finding_id", "model_version_id", "finding", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    finding: Mapped[str] = mapped_column(String(32))
    threshold: Mapped[float] = mapped_column(Float)
    reason: Mapped[str] = mapped_column(Text)
    set_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))  # None: from the command line
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class RegistryEvent(Base):
    """One promotion or roll back (db.registry): the version made active, the one it replaced, who
    (None: the command line) and why."""

    __tablename__ = "registry_events"
    __table_args__ = (
        CheckConstraint("action IN ('promote', 'rollback')", name="action"),
        Index("ix_registry_events_model_version_id_id", "model_version_id", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    previous_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    action: Mapped[str] = mapped_column(String(16))
    by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    reason: Mapped[str] = mapped_column(Text, default="", server_default="")
