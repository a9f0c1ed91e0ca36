"""Trustworthy predictions and promotion decisions (issue 12): two new append-only tables.

- operating_points (db.operating_points): an admin's threshold for one finding of a version, with who
  set it and why; the latest row of a (version, finding) is the one in use.
- registry_events (db.registry): every promotion and roll back, with who (NULL: the command line) and
  why. Promotions made before this revision have no event.

UPDATE and DELETE on both are refused by triggers, as on label_events. Nothing else changes.

Revision ID: 0007_trust
Revises: 0006_ood
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_trust"
down_revision: str | Sequence[str] | None = "0006_ood"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The 14 findings in CheXNet order, as of this revision.
_FINDINGS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)  # fmt: skip
_APPEND_ONLY_TABLES = ("operating_points", "registry_events")


def _create_append_only_triggers(table: str) -> None:
    message = f"{table} is append-only"
    if op.get_bind().dialect.name == "sqlite":
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER {table}_no_{action.lower()} BEFORE {action} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{message}'); END"
            )
    else:
        op.execute(
            f"CREATE FUNCTION {table}_append_only() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN RAISE EXCEPTION '{message}'; END $$"
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_change BEFORE UPDATE OR DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION {table}_append_only()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {table}_append_only()"
        )


def _drop_append_only_triggers(table: str) -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute(f"DROP TRIGGER IF EXISTS {table}_no_update")
        op.execute(f"DROP TRIGGER IF EXISTS {table}_no_delete")
    else:
        op.execute(f"DROP TRIGGER IF EXISTS {table}_no_change ON {table}")
        op.execute(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}")
        op.execute(f"DROP FUNCTION IF EXISTS {table}_append_only()")


def upgrade() -> None:
    findings = ", ".join(f"'{finding}'" for finding in _FINDINGS)
    op.create_table(
        "operating_points",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("finding", sa.String(length=32), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("set_by_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(f"finding IN ({findings})", name=op.f("ck_operating_points_finding")),
        sa.CheckConstraint("threshold >= 0 AND threshold <= 1", name=op.f("ck_operating_points_threshold")),
        sa.CheckConstraint("length(reason) > 0", name=op.f("ck_operating_points_reason")),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_operating_points_model_version_id_model_versions"),
        ),
        sa.ForeignKeyConstraint(
            ["set_by_id"], ["users.id"], name=op.f("fk_operating_points_set_by_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_operating_points")),
    )
    op.create_index(
        "ix_operating_points_model_version_id_finding_id",
        "operating_points",
        ["model_version_id", "finding", "id"],
    )
    op.create_table(
        "registry_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("previous_version_id", sa.Integer(), nullable=True),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("by_id", sa.Integer(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text(), server_default="", nullable=False),
        sa.CheckConstraint("action IN ('promote', 'rollback')", name=op.f("ck_registry_events_action")),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_registry_events_model_version_id_model_versions"),
        ),
        sa.ForeignKeyConstraint(
            ["previous_version_id"],
            ["model_versions.id"],
            name=op.f("fk_registry_events_previous_version_id_model_versions"),
        ),
        sa.ForeignKeyConstraint(["by_id"], ["users.id"], name=op.f("fk_registry_events_by_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_registry_events")),
    )
    op.create_index("ix_registry_events_model_version_id_id", "registry_events", ["model_version_id", "id"])
    for table in _APPEND_ONLY_TABLES:
        _create_append_only_triggers(table)


def downgrade() -> None:
    for table in _APPEND_ONLY_TABLES:
        _drop_append_only_triggers(table)
    op.drop_index("ix_registry_events_model_version_id_id", table_name="registry_events")
    op.drop_table("registry_events")
    op.drop_index("ix_operating_points_model_version_id_finding_id", table_name="operating_points")
    op.drop_table("operating_points")
