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
from collections.abc import Iterable
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
    true,
)
from sqlalchemy.orm import Mapped, mapped_column, validates

from core.labels import FINDINGS
from db.base import NAMING_CONVENTION, Base, UTCDateTime, utcnow  # noqa: F401 - part of this module's API

# The reading study's and the trust tables live in their own modules; importing them here registers them
# on Base.metadata and keeps `from db.models import X` working for every table.
from db.pacs_models import PacsConnection, PacsInstance, PacsScreenedStudy, PacsScreening  # noqa: F401
from db.study_models import Assignment, CamFeedback, OodSuspect, ReadStatus, StudySetting  # noqa: F401
from db.trust_models import OperatingPointRecord, RegistryEvent  # noqa: F401

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
EXCLUDE_BIT = 1 << len(FINDINGS)  # read_status.disputed_mask: the readers differ on excluding the image


def mask_of(findings: Iterable[str]) -> int:
    """Bit mask (bit i: FINDINGS[i]) of some findings: how uncertain/disputed findings are stored."""
    return sum(1 << FINDINGS.index(finding) for finding in set(findings))


def findings_in(mask: int | None) -> tuple[str, ...]:
    """The findings of a bit mask, in FINDINGS order (EXCLUDE_BIT and higher bits are ignored)."""
    return tuple(finding for i, finding in enumerate(FINDINGS) if (mask or 0) >> i & 1)


def _shuffle_key_sql() -> str:
    """A bijective 32-bit integer hash of `images.id` in portable SQL (murmur-style multiply/xor-shift).

    The random review queue walks images in the order of this key from a seeded starting point, along an
    index on the expression: a shuffled order without ORDER BY random() over every image. `|`, `&` and
    `>>` are the same in SQLite and PostgreSQL; SQLite has no xor, hence (a | b) - (a & b). Products stay
    below 2**63 for ids below 2**32.
    """

    def xor(a: str, b: str) -> str:
        return f"(({a}) | ({b})) - (({a}) & ({b}))"

    mask = "4294967295"
    first = f"(id * 2654435761) & {mask}"
    mixed = xor(first, f"({first}) >> 16")
    second = f"(({mixed}) * 73244475) & {mask}"
    return f"({xor(second, f'({second}) >> 16')})"


SHUFFLE_KEY_SQL = _shuffle_key_sql()  # the indexed expression: queries must use this exact text


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


def _username_key_default(context: Any) -> str:
    return str(context.get_current_parameters()["username"]).lower()


class User(Base):
    """An account. `username_key` is the lower-cased username: unique, so `Admin` cannot sit beside `admin`
    (a column rather than an index on lower(username), so both backends and the migrations agree)."""

    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint("role IN ('clinician', 'admin')", name="role"),
        Index("uq_users_username_key", "username_key", unique=True),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    username_key: Mapped[str] = mapped_column(String(64), default=_username_key_default, server_default="")
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


class UserSession(Base):
    """A login: the browser holds a random token in a signed cookie, the database only its sha256.

    A session ends when revoked (logout, an admin), after IDLE_TIMEOUT without a page run, or at
    `expires_at` (see db.sessions).
    """

    __tablename__ = "user_sessions"
    __table_args__ = (Index("ix_user_sessions_user_id", "user_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime]
    revoked_at: Mapped[dt.datetime | None]
    client_ip: Mapped[str] = mapped_column(String(64), default="")
    user_agent: Mapped[str] = mapped_column(String(255), default="")


class LoginAttempt(Base):
    """One verified login attempt (throttled attempts are refused before verifying and not stored).

    `username_key` is the lower-cased name typed, whether or not such an account exists; `client` the
    address (or, where none is known, the browser session) it came from.
    """

    __tablename__ = "login_attempts"
    __table_args__ = (
        Index("ix_login_attempts_username_key_at", "username_key", "at"),
        Index("ix_login_attempts_client_at", "client", "at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    username_key: Mapped[str] = mapped_column(String(64))
    client: Mapped[str] = mapped_column(String(128))
    succeeded: Mapped[bool]


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
        Index("ix_images_shuffle_key", text(SHUFFLE_KEY_SQL)),
        Index("ix_images_original_filename", "original_filename"),  # finding an upload by its file name
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
    __table_args__ = (
        UniqueConstraint("image_id", "source"),
        Index("ix_nlp_labels_source", "source"),
        # The "by finding" queue: the images whose NLP label has the finding, without reading the others.
        *(
            Index(
                f"ix_nlp_labels_{column}_positive",
                "source",  # an equality to search on: SQLite's planner prefers that to scanning an index
                "image_id",
                sqlite_where=text(f"source = 'nlp' AND {column}"),
                postgresql_where=text(f"source = 'nlp' AND {column}"),
            )
            for column in FINDING_COLUMNS
        ),
    )

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
    # Per-finding Uncertain (bit i: FINDINGS[i]; its boolean column is then False) and reason codes
    # {finding: [code, ...]} (db.label_rules.REASON_CODES). How the read was made: `blinded` (the reader saw
    # no other reader's label), `study_mode` (db.study: "ai_first" / "ai_hidden"), `read_seconds`.
    uncertain_mask: Mapped[int] = mapped_column(default=0, server_default="0")
    reasons: Mapped[dict[str, Any] | None]
    blinded: Mapped[bool] = mapped_column(default=False, server_default=false())
    study_mode: Mapped[str] = mapped_column(String(16), default="", server_default="")
    read_seconds: Mapped[float | None] = mapped_column(Float)


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
    uncertain_mask: Mapped[int] = mapped_column(default=0, server_default="0")  # as on Review
    reasons: Mapped[dict[str, Any] | None]


class ReviewedLabel(FindingColumns, Base):
    """The effective label of an image that has reviews or an adjudication, one row per such image.

    Derived data: db.effective rewrites an image's row in the same transaction as every review or
    adjudication save (and `rebuild` recomputes them all), from the rules of db.reviews. Images with no
    row here take their NLP label. Kept as a table so that queues and statistics over 112k images join
    one indexed row per image instead of aggregating every review on every page load.
    """

    __tablename__ = "reviewed_labels"
    __table_args__ = (CheckConstraint("source IN ('adjudication', 'consensus')", name="source"),)

    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    source: Mapped[str] = mapped_column(String(16))
    n_reviews: Mapped[int]
    exclude: Mapped[bool]
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class LabelEvent(Base):
    """Append-only audit trail: one row per saved change of a review or adjudication.

    `before` is None for the first save; `before`/`after` are `label_state` dicts
    ({"findings": {...}, "no_finding", "exclude", "comment", "version"}). UPDATE and DELETE on this
    table are refused by database triggers (see the initial migration). Each event also carries
    `hash`, sha256 over `prev_hash` (the previous event's hash) and its own fields (db.audit), so an
    edit made with the triggers dropped breaks the chain that `python -m db verify-audit` checks; the
    unique `prev_hash` makes a fork (two events after the same one) impossible.
    """

    __tablename__ = "label_events"
    __table_args__ = (
        CheckConstraint("kind IN ('review', 'adjudication')", name="kind"),
        Index("ix_label_events_image_id", "image_id"),
        Index("ix_label_events_user_id", "user_id"),
        Index("uq_label_events_prev_hash", "prev_hash", unique=True),
        Index("ix_label_events_at", "at"),
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
    prev_hash: Mapped[str] = mapped_column(String(64), server_default="")
    hash: Mapped[str] = mapped_column(String(64), server_default="")


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
    # `metrics` without the evaluation reports' curves (~6 KB instead of ~1.2 MB): what a list of every
    # version reads. Kept in step by the validator below; never assigned by hand.
    metrics_summary: Mapped[dict[str, Any] | None]
    notes: Mapped[str] = mapped_column(Text, default="")
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    promoted_at: Mapped[dt.datetime | None]

    @validates("metrics")
    def _keep_summary(self, _key: str, metrics: dict[str, Any] | None) -> dict[str, Any] | None:
        self.metrics_summary = metrics_without_curves(metrics)
        return metrics

    def __repr__(self) -> str:
        return f"ModelVersion(id={self.id}, name={self.name!r}, status={self.status!r})"


CURVE_KEYS = ("roc", "pr")  # the large parts of an evaluation report (points per finding)


def metrics_without_curves(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    """A version's metrics with every evaluation report's ROC and PR points left out."""
    if metrics is None:
        return None
    evaluations = metrics.get("evaluations")
    if not isinstance(evaluations, dict):
        return dict(metrics)
    slim = {
        labels: {
            split: {k: v for k, v in report.items() if k not in CURVE_KEYS}
            if isinstance(report, dict)
            else report
            for split, report in reports.items()
        }
        if isinstance(reports, dict)
        else reports
        for labels, reports in evaluations.items()
    }
    return {**metrics, "evaluations": slim}


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
    # max over findings of |probability - effective label|, and that finding's index in FINDINGS;
    # NULL until db.effective.refresh_disagreement has scored the row.
    disagreement: Mapped[float | None] = mapped_column(Float)
    disagreement_finding: Mapped[int | None] = mapped_column(SmallInteger)


# The "model disagrees most" queue reads this index from the top (db.effective keeps the scores current).
Index(
    "ix_predictions_disagreement",
    Prediction.model_version_id,
    Prediction.disagreement.desc(),
    Prediction.image_id,
)


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
