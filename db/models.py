"""The database schema (SQLAlchemy 2 typed declarative models).

Changing a model means adding an alembic revision under `db/migrations/versions/`
(`python -m db make-migration "what changed"` autogenerates one to review).

Findings are stored as 14 boolean columns named `finding_column(name)` (e.g. "Pleural_Thickening" ->
`pleural_thickening`) on `reviews`, `adjudications` and `nlp_labels`, so that queries and exports can
filter on them in SQL; `findings_of(row)` / `set_findings(row, ...)` convert to and from dicts keyed by
`core.labels.FINDINGS`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
    true,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from core.labels import FINDINGS

ROLES = ("clinician", "admin")
IMAGE_SOURCES = ("dataset", "upload")
LABEL_EVENT_KINDS = ("review", "adjudication")
MODEL_STATUSES = ("registered", "active", "retired")
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled", "interrupted")
JOB_FINISHED_STATUSES = ("succeeded", "failed", "cancelled", "interrupted")

# Label sources of `nlp_labels.source`.
SOURCE_NLP = "nlp"  # the dataset's NLP-mined labels (Data_Entry "Finding Labels")
SOURCE_GOOGLE = "google2019"  # Majkowska et al. 2019 radiologist-adjudicated labels (4 findings)


def finding_column(finding: str) -> str:
    """Column / attribute name of a finding: "Pleural_Thickening" -> "pleural_thickening"."""
    if finding not in FINDINGS:
        raise ValueError(f"Unknown finding {finding!r}.")
    return finding.lower()


FINDING_COLUMNS: tuple[str, ...] = tuple(finding_column(f) for f in FINDINGS)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite itself stores naive text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("Naive datetimes are ambiguous; pass timezone-aware UTC datetimes.")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dt.datetime: UTCDateTime(), dict[str, Any]: JSON(), list[Any]: JSON()}


def _finding_columns_mixin(name: str, nullable: bool) -> type:
    """A mixin with one Boolean column per finding (declared in a loop so the 14 stay in sync)."""
    columns = {
        column: mapped_column(Boolean, nullable=nullable, default=None if nullable else False)
        for column in FINDING_COLUMNS
    }
    return type(name, (), columns)


FindingColumns = _finding_columns_mixin("FindingColumns", nullable=False)
NullableFindingColumns = _finding_columns_mixin("NullableFindingColumns", nullable=True)


def findings_of(row: Any) -> dict[str, bool | None]:
    """{finding: value} of a Review, Adjudication or NlpLabel row, in FINDINGS order."""
    return {f: getattr(row, c) for f, c in zip(FINDINGS, FINDING_COLUMNS, strict=True)}


def set_findings(row: Any, findings: dict[str, bool | None]) -> None:
    for finding, value in findings.items():
        setattr(row, finding_column(finding), value)


class User(Base):
    __tablename__ = "users"
    __table_args__ = (CheckConstraint("role IN ('clinician', 'admin')", name="role"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), default="clinician")
    active: Mapped[bool] = mapped_column(default=True, server_default=true())
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_login_at: Mapped[dt.datetime | None]

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def __repr__(self) -> str:
        return f"User(id={self.id}, username={self.username!r}, role={self.role!r})"


class Image(Base):
    """One X-ray. Dataset images have `image_index` (the NIH file name); uploads have `sha256`.

    `sha256` (of the file bytes) is unique where known. Dataset images imported with
    `hash_images=False` (the fast metadata-only import of the full dataset) have it NULL until
    `db.importer.fill_missing_sha256` computes it; an upload whose bytes equal a dataset image's is
    recognised as that image.
    """

    __tablename__ = "images"
    __table_args__ = (
        CheckConstraint("source IN ('dataset', 'upload')", name="source"),
        Index("ix_images_split", "split"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    image_index: Mapped[str | None] = mapped_column(String(64), unique=True)
    sha256: Mapped[str | None] = mapped_column(String(64), unique=True)
    path: Mapped[str | None] = mapped_column(Text)
    patient_id: Mapped[int | None]
    view: Mapped[str | None] = mapped_column(String(8))
    split: Mapped[str | None] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(16), default="dataset")
    original_width: Mapped[int | None]
    original_height: Mapped[int | None]
    original_filename: Mapped[str | None] = mapped_column(String(255))
    uploaded_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    @property
    def label(self) -> str:
        """What to call the image in messages: its NIH name, else the upload's file name, else its id."""
        return self.image_index or self.original_filename or f"image #{self.id}"

    def __repr__(self) -> str:
        return f"Image(id={self.id}, image_index={self.image_index!r}, source={self.source!r})"


class NlpLabel(NullableFindingColumns, Base):
    """Labels of an image from a non-reviewer source: one row per (image, source).

    source "nlp": the dataset's NLP-mined labels, all 14 columns set.
    source "google2019": only `pneumothorax` is set among the 14 columns (the other Google findings have
    no one-to-one ChestX-ray14 counterpart); `extra` holds the source's own labels
    {"Fracture", "Pneumothorax", "Airspace opacity", "Nodule or mass": bool|None, "set_id": "val"|"test"}.
    """

    __tablename__ = "nlp_labels"
    __table_args__ = (UniqueConstraint("image_id", "source"), Index("ix_nlp_labels_source", "source"))

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    source: Mapped[str] = mapped_column(String(32), default=SOURCE_NLP)
    extra: Mapped[dict[str, Any] | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Box(Base):
    """A bounding box in original-image pixels (BBox_List_2017: x, y of the top-left corner, w, h)."""

    __tablename__ = "boxes"

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    finding: Mapped[str] = mapped_column(String(32))
    x: Mapped[float] = mapped_column(Float)
    y: Mapped[float] = mapped_column(Float)
    w: Mapped[float] = mapped_column(Float)
    h: Mapped[float] = mapped_column(Float)
    source: Mapped[str] = mapped_column(String(32), default="nih")


class Review(FindingColumns, Base):
    """One clinician's label of one image. `version` starts at 1 and grows by one per saved change."""

    __tablename__ = "reviews"
    __table_args__ = (UniqueConstraint("image_id", "user_id"), Index("ix_reviews_user_id", "user_id"))

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    no_finding: Mapped[bool] = mapped_column(default=False)
    exclude: Mapped[bool] = mapped_column(default=False)
    comment: Mapped[str] = mapped_column(Text, default="")
    version: Mapped[int] = mapped_column(default=1)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Adjudication(FindingColumns, Base):
    """An admin's final label of an image; overrides the reviewers' consensus. Versioned like Review."""

    __tablename__ = "adjudications"

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    no_finding: Mapped[bool] = mapped_column(default=False)
    exclude: Mapped[bool] = mapped_column(default=False)
    comment: Mapped[str] = mapped_column(Text, default="")
    version: Mapped[int] = mapped_column(default=1)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class LabelEvent(Base):
    """Append-only audit trail: one row per saved change of a review or adjudication.

    `before` is None for the first save; `before`/`after` are `label_state` dicts
    ({"findings": {...}, "no_finding", "exclude", "comment", "version"}). UPDATE and DELETE on this
    table are refused by database triggers (see the initial migration).
    """

    __tablename__ = "label_events"
    __table_args__ = (
        CheckConstraint("kind IN ('review', 'adjudication')", name="kind"),
        Index("ix_label_events_image_id", "image_id"),
        Index("ix_label_events_user_id", "user_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    kind: Mapped[str] = mapped_column(String(16))
    version: Mapped[int]
    before: Mapped[dict[str, Any] | None]
    after: Mapped[dict[str, Any]]
    comment: Mapped[str] = mapped_column(Text, default="")


class ModelVersion(Base):
    """A registered model checkpoint. At most one row has is_active (a partial unique index says so)."""

    __tablename__ = "model_versions"
    __table_args__ = (
        CheckConstraint("status IN ('registered', 'active', 'retired')", name="status"),
        Index(
            "uq_model_versions_one_active",
            "is_active",
            unique=True,
            sqlite_where=text("is_active"),
            postgresql_where=text("is_active"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    path: Mapped[str] = mapped_column(Text)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    status: Mapped[str] = mapped_column(String(16), default="registered")
    is_active: Mapped[bool] = mapped_column(default=False, server_default=false())
    label_snapshot: Mapped[dict[str, Any] | None]
    hyperparams: Mapped[dict[str, Any] | None]
    metrics: Mapped[dict[str, Any] | None]
    notes: Mapped[str] = mapped_column(Text, default="")
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    promoted_at: Mapped[dt.datetime | None]

    def __repr__(self) -> str:
        return f"ModelVersion(id={self.id}, name={self.name!r}, status={self.status!r})"


class Prediction(Base):
    """A model version's 14 probabilities for an image, `probabilities` in FINDINGS order."""

    __tablename__ = "predictions"
    __table_args__ = (
        UniqueConstraint("image_id", "model_version_id"),
        Index("ix_predictions_model_version_id", "model_version_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"))
    probabilities: Mapped[list[Any]]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class TrainingJob(Base):
    """A background training job, claimed and run by a worker (see db.jobs)."""

    __tablename__ = "training_jobs"
    __table_args__ = (
        CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'interrupted')",
            name="status",
        ),
        Index("ix_training_jobs_status_created_at", "status", "created_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), default="fine_tune")
    status: Mapped[str] = mapped_column(String(16), default="queued")
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    progress: Mapped[dict[str, Any] | None]
    error: Mapped[str | None] = mapped_column(Text)
    worker_id: Mapped[str | None] = mapped_column(String(128))
    heartbeat_at: Mapped[dt.datetime | None]
    cancel_requested: Mapped[bool] = mapped_column(default=False, server_default=false())
    result_model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    started_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]

    def __repr__(self) -> str:
        return f"TrainingJob(id={self.id}, kind={self.kind!r}, status={self.status!r})"
