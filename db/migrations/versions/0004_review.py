"""Review study: per-finding uncertainty, how each read was made, assignments, read status, CAM feedback.

- reviews: uncertain_mask (bit i: finding i is Uncertain), reasons (JSON reason codes per finding),
  blinded, study_mode, read_seconds. Reviews saved before this revision count as not blinded.
- adjudications: uncertain_mask, reasons.
- study_settings (db.study), assignments (db.assignments), cam_feedback: new tables.
- ix_images_original_filename: an upload is found by its file name.
- read_status (db.adjudication): filled here from the existing reviews and adjudications with the same
  rule: a dispute on a finding where the readers who did not exclude the image differ, on exclusion
  where the readers differ (bit 14); reviews before this revision have no Uncertain findings.

Revision ID: 0004_review
Revises: 0003_scale
Create Date: 2026-12-02
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_review"
down_revision: str | Sequence[str] | None = "0003_scale"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The 14 findings in CheXNet order (bit i of the masks), as of this revision.
FINDINGS = (
    "atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule", "pneumonia",
    "pneumothorax", "consolidation", "edema", "emphysema", "fibrosis", "pleural_thickening", "hernia",
)  # fmt: skip
EXCLUDE_BIT = 1 << len(FINDINGS)


def _postgresql() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def _now() -> object:
    now = dt.datetime.now(dt.UTC)
    return now if _postgresql() else now.replace(tzinfo=None).isoformat(sep=" ")


def _fill_read_status() -> None:
    def differs(condition: str) -> str:
        value = f"CASE WHEN {condition} THEN 1 ELSE 0 END"
        return f"MIN({value}) <> MAX({value})"

    def kept(column: str) -> str:  # the finding among the reviews that do not exclude the image
        return f"CASE WHEN NOT exclude THEN (CASE WHEN {column} THEN 1 ELSE 0 END) END"

    bits = [
        f"CASE WHEN MIN({kept(f)}) <> MAX({kept(f)}) THEN {1 << i} ELSE 0 END" for i, f in enumerate(FINDINGS)
    ]
    bits.append(f"CASE WHEN {differs('exclude')} THEN {EXCLUDE_BIT} ELSE 0 END")
    op.get_bind().execute(
        sa.text(
            "INSERT INTO read_status (image_id, n_reads, n_blinded, disputed_mask, adjudicated, "
            "open_dispute, uncertain_mask, updated_at) "
            "SELECT ids.image_id, COALESCE(v.n, 0), 0, COALESCE(v.mask, 0), "
            "a.image_id IS NOT NULL, a.image_id IS NULL AND COALESCE(v.mask, 0) <> 0, 0, :now "
            "FROM (SELECT image_id FROM reviews UNION SELECT image_id FROM adjudications) ids "
            f"LEFT JOIN (SELECT image_id, COUNT(*) AS n, {' + '.join(bits)} AS mask FROM reviews "
            "GROUP BY image_id) v ON v.image_id = ids.image_id "
            "LEFT JOIN adjudications a ON a.image_id = ids.image_id"
        ),
        {"now": _now()},
    )


def upgrade() -> None:
    for table in ("reviews", "adjudications"):
        op.add_column(table, sa.Column("uncertain_mask", sa.Integer(), server_default="0", nullable=False))
        op.add_column(table, sa.Column("reasons", sa.JSON(), nullable=True))
    op.add_column("reviews", sa.Column("blinded", sa.Boolean(), server_default=sa.false(), nullable=False))
    op.add_column("reviews", sa.Column("study_mode", sa.String(length=16), server_default="", nullable=False))
    op.add_column("reviews", sa.Column("read_seconds", sa.Float(), nullable=True))
    op.create_index("ix_images_original_filename", "images", ["original_filename"])

    op.create_table(
        "study_settings",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["updated_by_id"], ["users.id"], name=op.f("fk_study_settings_updated_by_id_users")
        ),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_study_settings")),
    )
    op.create_table(
        "assignments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("read_number", sa.SmallInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by_id", sa.Integer(), nullable=True),
        sa.Column("done_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["image_id"], ["images.id"], name=op.f("fk_assignments_image_id_images"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_assignments_user_id_users")),
        sa.ForeignKeyConstraint(
            ["created_by_id"], ["users.id"], name=op.f("fk_assignments_created_by_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_assignments")),
        sa.UniqueConstraint("image_id", "user_id", name=op.f("uq_assignments_image_id_user_id")),
    )
    op.create_index("ix_assignments_user_id_done_at_id", "assignments", ["user_id", "done_at", "id"])
    op.create_table(
        "read_status",
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("n_reads", sa.Integer(), nullable=False),
        sa.Column("n_blinded", sa.Integer(), nullable=False),
        sa.Column("disputed_mask", sa.Integer(), nullable=False),
        sa.Column("adjudicated", sa.Boolean(), nullable=False),
        sa.Column("open_dispute", sa.Boolean(), nullable=False),
        sa.Column("uncertain_mask", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["image_id"], ["images.id"], name=op.f("fk_read_status_image_id_images"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("image_id", name=op.f("pk_read_status")),
    )
    op.create_index("ix_read_status_open_dispute_image_id", "read_status", ["open_dispute", "image_id"])
    _fill_read_status()
    op.create_table(
        "cam_feedback",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("model_name", sa.String(length=128), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=True),
        sa.Column("finding", sa.String(length=32), nullable=False),
        sa.Column("points_at_finding", sa.Boolean(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["image_id"], ["images.id"], name=op.f("fk_cam_feedback_image_id_images"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_cam_feedback_user_id_users")),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_cam_feedback_model_version_id_model_versions"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cam_feedback")),
        sa.UniqueConstraint(
            "image_id",
            "user_id",
            "model_name",
            "finding",
            name=op.f("uq_cam_feedback_image_id_user_id_model_name_finding"),
        ),
    )
    op.create_index("ix_cam_feedback_model_name", "cam_feedback", ["model_name"])


def downgrade() -> None:
    op.drop_index("ix_cam_feedback_model_name", table_name="cam_feedback")
    op.drop_table("cam_feedback")
    op.drop_index("ix_read_status_open_dispute_image_id", table_name="read_status")
    op.drop_table("read_status")
    op.drop_index("ix_assignments_user_id_done_at_id", table_name="assignments")
    op.drop_table("assignments")
    op.drop_table("study_settings")
    op.drop_index("ix_images_original_filename", table_name="images")
    # Plain ALTER TABLE ... DROP COLUMN (SQLite >= 3.35): no table rebuild (which would drop triggers).
    for column in ("read_seconds", "study_mode", "blinded", "reasons", "uncertain_mask"):
        op.execute(f"ALTER TABLE reviews DROP COLUMN {column}")
    for column in ("reasons", "uncertain_mask"):
        op.execute(f"ALTER TABLE adjudications DROP COLUMN {column}")
