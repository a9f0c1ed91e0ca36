"""Out-of-distribution screening: ood_suspects, the imported images a version's OOD gate flagged,
listed for reviewers as suggested exclusions (db.ood_suspects). New table only; nothing else changes.

Revision ID: 0006_ood
Revises: 0004_review
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_ood"
down_revision: str | Sequence[str] | None = "0004_review"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ood_suspects",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["image_id"], ["images.id"], name=op.f("fk_ood_suspects_image_id_images"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_ood_suspects_model_version_id_model_versions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["training_jobs.id"],
            name=op.f("fk_ood_suspects_job_id_training_jobs"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ood_suspects")),
        sa.UniqueConstraint(
            "image_id", "model_version_id", name=op.f("uq_ood_suspects_image_id_model_version_id")
        ),
    )
    op.create_index(
        "ix_ood_suspects_model_version_id_kind_score", "ood_suspects", ["model_version_id", "kind", "score"]
    )


def downgrade() -> None:
    op.drop_index("ix_ood_suspects_model_version_id_kind_score", table_name="ood_suspects")
    op.drop_table("ood_suspects")
