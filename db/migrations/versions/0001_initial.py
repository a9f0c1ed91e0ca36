"""Initial schema: users, images, labels, reviews, audit events, models, predictions, jobs.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_initial"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_APPEND_ONLY_MESSAGE = "label_events is an append-only audit trail"


def _create_append_only_triggers() -> None:
    """Refuse UPDATE and DELETE (and TRUNCATE) on label_events in the database itself."""
    if op.get_bind().dialect.name == "sqlite":
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER label_events_no_{action.lower()} BEFORE {action} ON label_events "
                f"BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY_MESSAGE}'); END"
            )
    else:
        op.execute(
            "CREATE FUNCTION label_events_append_only() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN RAISE EXCEPTION '{_APPEND_ONLY_MESSAGE}'; END $$"
        )
        op.execute(
            "CREATE TRIGGER label_events_no_change BEFORE UPDATE OR DELETE ON label_events "
            "FOR EACH ROW EXECUTE FUNCTION label_events_append_only()"
        )
        op.execute(
            "CREATE TRIGGER label_events_no_truncate BEFORE TRUNCATE ON label_events "
            "FOR EACH STATEMENT EXECUTE FUNCTION label_events_append_only()"
        )


def _drop_append_only_triggers() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS label_events_no_update")
        op.execute("DROP TRIGGER IF EXISTS label_events_no_delete")
    else:
        op.execute("DROP TRIGGER IF EXISTS label_events_no_change ON label_events")
        op.execute("DROP TRIGGER IF EXISTS label_events_no_truncate ON label_events")
        op.execute("DROP FUNCTION IF EXISTS label_events_append_only()")


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("active", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_login_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("role IN ('clinician', 'admin')", name=op.f("ck_users_role")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("username", name=op.f("uq_users_username")),
    )
    op.create_table(
        "images",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_index", sa.String(length=64), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("path", sa.Text(), nullable=True),
        sa.Column("patient_id", sa.Integer(), nullable=True),
        sa.Column("view", sa.String(length=8), nullable=True),
        sa.Column("split", sa.String(length=16), nullable=True),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("original_width", sa.Integer(), nullable=True),
        sa.Column("original_height", sa.Integer(), nullable=True),
        sa.Column("original_filename", sa.String(length=255), nullable=True),
        sa.Column("uploaded_by_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("source IN ('dataset', 'upload')", name=op.f("ck_images_source")),
        sa.ForeignKeyConstraint(
            ["uploaded_by_id"], ["users.id"], name=op.f("fk_images_uploaded_by_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_images")),
        sa.UniqueConstraint("image_index", name=op.f("uq_images_image_index")),
        sa.UniqueConstraint("sha256", name=op.f("uq_images_sha256")),
    )
    op.create_index("ix_images_split", "images", ["split"], unique=False)

    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("is_active", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("label_snapshot", sa.JSON(), nullable=True),
        sa.Column("hyperparams", sa.JSON(), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.Column("notes", sa.Text(), nullable=False),
        sa.Column("created_by_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("promoted_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('registered', 'active', 'retired')", name=op.f("ck_model_versions_status")
        ),
        sa.ForeignKeyConstraint(
            ["created_by_id"], ["users.id"], name=op.f("fk_model_versions_created_by_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["parent_id"], ["model_versions.id"], name=op.f("fk_model_versions_parent_id_model_versions")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_versions")),
        sa.UniqueConstraint("name", name=op.f("uq_model_versions_name")),
    )
    op.create_index(
        "uq_model_versions_one_active",
        "model_versions",
        ["is_active"],
        unique=True,
        sqlite_where=sa.text("is_active"),
        postgresql_where=sa.text("is_active"),
    )

    op.create_table(
        "adjudications",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("no_finding", sa.Boolean(), nullable=False),
        sa.Column("exclude", sa.Boolean(), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("atelectasis", sa.Boolean(), nullable=False),
        sa.Column("cardiomegaly", sa.Boolean(), nullable=False),
        sa.Column("effusion", sa.Boolean(), nullable=False),
        sa.Column("infiltration", sa.Boolean(), nullable=False),
        sa.Column("mass", sa.Boolean(), nullable=False),
        sa.Column("nodule", sa.Boolean(), nullable=False),
        sa.Column("pneumonia", sa.Boolean(), nullable=False),
        sa.Column("pneumothorax", sa.Boolean(), nullable=False),
        sa.Column("consolidation", sa.Boolean(), nullable=False),
        sa.Column("edema", sa.Boolean(), nullable=False),
        sa.Column("emphysema", sa.Boolean(), nullable=False),
        sa.Column("fibrosis", sa.Boolean(), nullable=False),
        sa.Column("pleural_thickening", sa.Boolean(), nullable=False),
        sa.Column("hernia", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], name=op.f("fk_adjudications_image_id_images")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_adjudications_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_adjudications")),
        sa.UniqueConstraint("image_id", name=op.f("uq_adjudications_image_id")),
    )
    op.create_table(
        "boxes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("finding", sa.String(length=32), nullable=False),
        sa.Column("x", sa.Float(), nullable=False),
        sa.Column("y", sa.Float(), nullable=False),
        sa.Column("w", sa.Float(), nullable=False),
        sa.Column("h", sa.Float(), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(
            ["image_id"], ["images.id"], name=op.f("fk_boxes_image_id_images"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_boxes")),
    )
    op.create_index(op.f("ix_boxes_image_id"), "boxes", ["image_id"], unique=False)

    op.create_table(
        "label_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("before", sa.JSON(), nullable=True),
        sa.Column("after", sa.JSON(), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.CheckConstraint("kind IN ('review', 'adjudication')", name=op.f("ck_label_events_kind")),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], name=op.f("fk_label_events_image_id_images")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_label_events_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_label_events")),
    )
    op.create_index("ix_label_events_image_id", "label_events", ["image_id"], unique=False)
    op.create_index("ix_label_events_user_id", "label_events", ["user_id"], unique=False)

    op.create_table(
        "nlp_labels",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("extra", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("atelectasis", sa.Boolean(), nullable=True),
        sa.Column("cardiomegaly", sa.Boolean(), nullable=True),
        sa.Column("effusion", sa.Boolean(), nullable=True),
        sa.Column("infiltration", sa.Boolean(), nullable=True),
        sa.Column("mass", sa.Boolean(), nullable=True),
        sa.Column("nodule", sa.Boolean(), nullable=True),
        sa.Column("pneumonia", sa.Boolean(), nullable=True),
        sa.Column("pneumothorax", sa.Boolean(), nullable=True),
        sa.Column("consolidation", sa.Boolean(), nullable=True),
        sa.Column("edema", sa.Boolean(), nullable=True),
        sa.Column("emphysema", sa.Boolean(), nullable=True),
        sa.Column("fibrosis", sa.Boolean(), nullable=True),
        sa.Column("pleural_thickening", sa.Boolean(), nullable=True),
        sa.Column("hernia", sa.Boolean(), nullable=True),
        sa.ForeignKeyConstraint(
            ["image_id"], ["images.id"], name=op.f("fk_nlp_labels_image_id_images"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_nlp_labels")),
        sa.UniqueConstraint("image_id", "source", name=op.f("uq_nlp_labels_image_id_source")),
    )
    op.create_index("ix_nlp_labels_source", "nlp_labels", ["source"], unique=False)

    op.create_table(
        "predictions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("probabilities", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["image_id"], ["images.id"], name=op.f("fk_predictions_image_id_images"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_predictions_model_version_id_model_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_predictions")),
        sa.UniqueConstraint(
            "image_id", "model_version_id", name=op.f("uq_predictions_image_id_model_version_id")
        ),
    )
    op.create_index("ix_predictions_model_version_id", "predictions", ["model_version_id"], unique=False)

    op.create_table(
        "reviews",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("no_finding", sa.Boolean(), nullable=False),
        sa.Column("exclude", sa.Boolean(), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("atelectasis", sa.Boolean(), nullable=False),
        sa.Column("cardiomegaly", sa.Boolean(), nullable=False),
        sa.Column("effusion", sa.Boolean(), nullable=False),
        sa.Column("infiltration", sa.Boolean(), nullable=False),
        sa.Column("mass", sa.Boolean(), nullable=False),
        sa.Column("nodule", sa.Boolean(), nullable=False),
        sa.Column("pneumonia", sa.Boolean(), nullable=False),
        sa.Column("pneumothorax", sa.Boolean(), nullable=False),
        sa.Column("consolidation", sa.Boolean(), nullable=False),
        sa.Column("edema", sa.Boolean(), nullable=False),
        sa.Column("emphysema", sa.Boolean(), nullable=False),
        sa.Column("fibrosis", sa.Boolean(), nullable=False),
        sa.Column("pleural_thickening", sa.Boolean(), nullable=False),
        sa.Column("hernia", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], name=op.f("fk_reviews_image_id_images")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_reviews_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reviews")),
        sa.UniqueConstraint("image_id", "user_id", name=op.f("uq_reviews_image_id_user_id")),
    )
    op.create_index("ix_reviews_user_id", "reviews", ["user_id"], unique=False)

    op.create_table(
        "training_jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("progress", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("worker_id", sa.String(length=128), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("result_model_version_id", sa.Integer(), nullable=True),
        sa.Column("created_by_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'interrupted')",
            name=op.f("ck_training_jobs_status"),
        ),
        sa.ForeignKeyConstraint(
            ["created_by_id"], ["users.id"], name=op.f("fk_training_jobs_created_by_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["result_model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_training_jobs_result_model_version_id_model_versions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_training_jobs")),
    )
    op.create_index(
        "ix_training_jobs_status_created_at", "training_jobs", ["status", "created_at"], unique=False
    )
    _create_append_only_triggers()


def downgrade() -> None:
    _drop_append_only_triggers()
    op.drop_index("ix_training_jobs_status_created_at", table_name="training_jobs")
    op.drop_table("training_jobs")
    op.drop_index("ix_reviews_user_id", table_name="reviews")
    op.drop_table("reviews")
    op.drop_index("ix_predictions_model_version_id", table_name="predictions")
    op.drop_table("predictions")
    op.drop_index("ix_nlp_labels_source", table_name="nlp_labels")
    op.drop_table("nlp_labels")
    op.drop_index("ix_label_events_user_id", table_name="label_events")
    op.drop_index("ix_label_events_image_id", table_name="label_events")
    op.drop_table("label_events")
    op.drop_index(op.f("ix_boxes_image_id"), table_name="boxes")
    op.drop_table("boxes")
    op.drop_table("adjudications")
    op.drop_index(
        "uq_model_versions_one_active",
        table_name="model_versions",
        sqlite_where=sa.text("is_active"),
        postgresql_where=sa.text("is_active"),
    )
    op.drop_table("model_versions")
    op.drop_index("ix_images_split", table_name="images")
    op.drop_table("images")
    op.drop_table("users")
