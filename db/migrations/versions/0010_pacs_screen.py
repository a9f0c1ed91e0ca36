"""PACS screening (issue 18): the pacs_screen job polls a connection for new studies; two new tables,
nothing else changes.

- pacs_screening (db.pacs_screening): per connection, how often the worker polls it (0: only when asked),
  the first study date the next poll asks for, when it is due, and the last screening job queued.
- pacs_screened_studies: each (connection, study pseudonym, model version) screened, so a study is
  never screened twice by the same version.

Revision ID: 0010_pacs_screen
Revises: 0009_pacs
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_pacs_screen"
down_revision: str | Sequence[str] | None = "0009_pacs"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "pacs_screening",
        sa.Column("connection_id", sa.Integer(), nullable=False),
        sa.Column("every_s", sa.Integer(), server_default="0", nullable=False),
        sa.Column("screen_from", sa.String(length=8), server_default="", nullable=False),
        sa.Column("next_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.CheckConstraint("every_s >= 0", name=op.f("ck_pacs_screening_every_s")),
        sa.ForeignKeyConstraint(
            ["connection_id"],
            ["pacs_connections.id"],
            name=op.f("fk_pacs_screening_connection_id_pacs_connections"),
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["training_jobs.id"], name=op.f("fk_pacs_screening_job_id_training_jobs")
        ),
        sa.PrimaryKeyConstraint("connection_id", name=op.f("pk_pacs_screening")),
    )
    op.create_table(
        "pacs_screened_studies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("connection_id", sa.Integer(), nullable=False),
        sa.Column("study_pseudonym", sa.String(length=64), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("images", sa.Integer(), nullable=False),
        sa.Column("written_back", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["connection_id"],
            ["pacs_connections.id"],
            name=op.f("fk_pacs_screened_studies_connection_id_pacs_connections"),
        ),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_pacs_screened_studies_model_version_id_model_versions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["training_jobs.id"], name=op.f("fk_pacs_screened_studies_job_id_training_jobs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pacs_screened_studies")),
        sa.UniqueConstraint(
            "connection_id", "study_pseudonym", "model_version_id", name=op.f("uq_pacs_screened_once")
        ),
    )


def downgrade() -> None:
    op.drop_table("pacs_screened_studies")
    op.drop_table("pacs_screening")
