"""PACS tables (issue 18): the DICOMweb connections an admin set up and every instance an import looked
at. Part of the schema of db.models, which imports them.

No identity from the PACS is stored: instances are known by keyed-hash pseudonyms (core.imaging.
deidentify), and the real UIDs that write-back needs are kept only sealed under the pseudonym key
(`source_link`), which lives in CHEXNET_HOME, not in the database.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, Index, String, Text, UniqueConstraint, false
from sqlalchemy.orm import Mapped, mapped_column

from db.base import Base, utcnow

PACS_AUTH_KINDS = ("none", "basic", "bearer")
PACS_INSTANCE_STATUSES = ("imported", "skipped")


class PacsConnection(Base):
    """A PACS reached over DICOMweb. `secret` (password or token) is stored sealed under the pseudonym
    key and never shown back (db.pacs)."""

    __tablename__ = "pacs_connections"
    __table_args__ = (CheckConstraint("auth IN ('none', 'basic', 'bearer')", name="auth"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    base_url: Mapped[str] = mapped_column(Text)
    auth: Mapped[str] = mapped_column(String(16), default="none")
    username: Mapped[str] = mapped_column(String(255), default="", server_default="")
    secret: Mapped[str] = mapped_column(Text, default="", server_default="")
    write_back: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class PacsInstance(Base):
    """One PACS instance an import looked at: imported (an `images` row) or skipped, with why."""

    __tablename__ = "pacs_instances"
    __table_args__ = (
        CheckConstraint("status IN ('imported', 'skipped')", name="status"),
        UniqueConstraint("connection_id", "sop_pseudonym"),
        Index("ix_pacs_instances_image_id", "image_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    connection_id: Mapped[int] = mapped_column(ForeignKey("pacs_connections.id"))
    sop_pseudonym: Mapped[str] = mapped_column(String(64))  # the de-identified SOP Instance UID
    study_pseudonym: Mapped[str] = mapped_column(String(64))
    patient_pseudonym: Mapped[str | None] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="", server_default="")
    image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id"))
    source_link: Mapped[str | None] = mapped_column(Text)  # sealed real UIDs, for write-back
    view: Mapped[str | None] = mapped_column(String(8))
    patient_sex: Mapped[str | None] = mapped_column(String(1))
    patient_age: Mapped[str | None] = mapped_column(String(4))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("training_jobs.id"))
    results_written_at: Mapped[dt.datetime | None]
    # The SOP Instance UID of the last readers' label SR sent for it (a keyed hash, not the PACS's UID):
    # the next one names it as its predecessor, and the same label is not sent again.
    label_sr_uid: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class PacsScreening(Base):
    """Screening a connection for new studies (the pacs_screen job, db.pacs_screening): every how many
    seconds the worker polls it (0: not on its own, "Screen now" still works), the first study date the
    next poll asks for (YYYYMMDD, "" before the first poll), when the next poll is due, and the last
    screening job queued for it (a new one is queued only when that one is no longer queued or running)."""

    __tablename__ = "pacs_screening"
    __table_args__ = (CheckConstraint("every_s >= 0", name="every_s"),)

    connection_id: Mapped[int] = mapped_column(ForeignKey("pacs_connections.id"), primary_key=True)
    every_s: Mapped[int] = mapped_column(default=0, server_default="0")
    screen_from: Mapped[str] = mapped_column(String(8), default="", server_default="")
    next_at: Mapped[dt.datetime | None]
    job_id: Mapped[int | None] = mapped_column(ForeignKey("training_jobs.id"))


class PacsScreenedStudy(Base):
    """A study of a connection that a model version screened (predicted, and written back when that was
    on): a later poll, or a re-run, leaves it alone for that version; another version screens it again."""

    __tablename__ = "pacs_screened_studies"
    __table_args__ = (
        UniqueConstraint(
            "connection_id", "study_pseudonym", "model_version_id", name="uq_pacs_screened_once"
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    connection_id: Mapped[int] = mapped_column(ForeignKey("pacs_connections.id"))
    study_pseudonym: Mapped[str] = mapped_column(String(64))  # the de-identified Study Instance UID
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"))
    images: Mapped[int] = mapped_column(default=0)  # its imported instances that were predicted
    written_back: Mapped[int] = mapped_column(default=0)  # of those, results sent to the PACS
    job_id: Mapped[int | None] = mapped_column(ForeignKey("training_jobs.id"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
