"""PACS import and write-back (issue 18): two new tables, nothing else changes.

- pacs_connections (db.pacs): a DICOMweb PACS an admin set up (address, optional basic or bearer
  authentication, whether results are written back; the secret is never shown back).
- pacs_instances (db.pacs): every instance an import looked at, known only by keyed-hash pseudonyms:
  imported (its images row) or skipped with the sentence saying why; the real UIDs for write-back are
  sealed under the pseudonym key kept in CHEXNET_HOME.

Revision ID: 0009_pacs
Revises: 0008_metrics_summary
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_pacs"
down_revision: str | Sequence[str] | None = "0008_metrics_summary"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "pacs_connections",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("base_url", sa.Text(), nullable=False),
        sa.Column("auth", sa.String(length=16), nullable=False),
        sa.Column("username", sa.String(length=255), server_default="", nullable=False),
        sa.Column("secret", sa.Text(), server_default="", nullable=False),
        sa.Column("write_back", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("created_by_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("auth IN ('none', 'basic', 'bearer')", name=op.f("ck_pacs_connections_auth")),
        sa.ForeignKeyConstraint(
            ["created_by_id"], ["users.id"], name=op.f("fk_pacs_connections_created_by_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pacs_connections")),
        sa.UniqueConstraint("name", name=op.f("uq_pacs_connections_name")),
    )
    op.create_table(
        "pacs_instances",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("connection_id", sa.Integer(), nullable=False),
        sa.Column("sop_pseudonym", sa.String(length=64), nullable=False),
        sa.Column("study_pseudonym", sa.String(length=64), nullable=False),
        sa.Column("patient_pseudonym", sa.String(length=16), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), server_default="", nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=True),
        sa.Column("source_link", sa.Text(), nullable=True),
        sa.Column("view", sa.String(length=8), nullable=True),
        sa.Column("patient_sex", sa.String(length=1), nullable=True),
        sa.Column("patient_age", sa.String(length=4), nullable=True),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("results_written_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("status IN ('imported', 'skipped')", name=op.f("ck_pacs_instances_status")),
        sa.ForeignKeyConstraint(
            ["connection_id"],
            ["pacs_connections.id"],
            name=op.f("fk_pacs_instances_connection_id_pacs_connections"),
        ),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], name=op.f("fk_pacs_instances_image_id_images")),
        sa.ForeignKeyConstraint(
            ["job_id"], ["training_jobs.id"], name=op.f("fk_pacs_instances_job_id_training_jobs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pacs_instances")),
        sa.UniqueConstraint(
            "connection_id", "sop_pseudonym", name=op.f("uq_pacs_instances_connection_id_sop_pseudonym")
        ),
    )
    op.create_index("ix_pacs_instances_image_id", "pacs_instances", ["image_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_pacs_instances_image_id", table_name="pacs_instances")
    op.drop_table("pacs_instances")
    op.drop_table("pacs_connections")
