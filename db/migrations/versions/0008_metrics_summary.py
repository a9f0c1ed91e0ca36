"""model_versions.metrics_summary: each version's metrics without the evaluation reports' curves.

A list of every version (the Fine-tune and Models & ROC pages) read ~1.2 MB of JSON per evaluated version
for a few numbers; it now reads this ~6 KB copy, and one version's curves only when they are drawn.
Existing rows are filled here; new writes keep it in step (db.models.ModelVersion).

Revision ID: 0008_metrics_summary
Revises: 0007_trust
Create Date: 2026-12-05
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_metrics_summary"
down_revision: str | Sequence[str] | None = "0007_trust"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CURVE_KEYS = ("roc", "pr")  # as of this revision


def _without_curves(metrics: dict) -> dict:
    evaluations = metrics.get("evaluations")
    if not isinstance(evaluations, dict):
        return metrics
    slim = {}
    for labels, reports in evaluations.items():
        if isinstance(reports, dict):
            reports = {
                split: {k: v for k, v in report.items() if k not in _CURVE_KEYS}
                if isinstance(report, dict)
                else report
                for split, report in reports.items()
            }
        slim[labels] = reports
    return {**metrics, "evaluations": slim}


def upgrade() -> None:
    op.add_column("model_versions", sa.Column("metrics_summary", sa.JSON(), nullable=True))
    versions = sa.table(
        "model_versions", sa.column("id", sa.Integer), sa.column("metrics", sa.JSON),
        sa.column("metrics_summary", sa.JSON),
    )  # fmt: skip
    bind = op.get_bind()
    rows = bind.execute(sa.select(versions.c.id).where(versions.c.metrics.is_not(None))).scalars().all()
    for version_id in rows:  # one at a time: a version's metrics can be megabytes
        metrics = bind.execute(sa.select(versions.c.metrics).where(versions.c.id == version_id)).scalar()
        if isinstance(metrics, str):  # a JSON null or a driver that hands back text
            metrics = json.loads(metrics)
        if isinstance(metrics, dict):
            bind.execute(
                versions.update()
                .where(versions.c.id == version_id)
                .values(metrics_summary=_without_curves(metrics))
            )


def downgrade() -> None:
    op.drop_column("model_versions", "metrics_summary")
