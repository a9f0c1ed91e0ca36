"""Scale: the effective label as a table, stored disagreement scores, indexes of the review queues.

- reviewed_labels: the effective label of every image with reviews or an adjudication (db.effective
  keeps it in step with each save); filled here from the existing reviews and adjudications with the
  rules of db.reviews (adjudication as it is; exclude on a strict majority of excluding reviews; a
  finding on a strict majority of the reviews that do not exclude).
- predictions.disagreement / disagreement_finding: max over findings of |probability - effective
  label| and where it is, scored here for the stored predictions; indexed per model version.
- ix_images_shuffle_key: the random queue's order (a 32-bit hash of the id, db.models.SHUFFLE_KEY_SQL).
- ix_nlp_labels_<finding>_positive: partial indexes of the NLP positives, for the finding queue.
- ix_label_events_at: label saves since a date (the Fine-tune page's "changed since active").

Revision ID: 0003_scale
Revises: 0002_security
Create Date: 2026-12-01
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_scale"
down_revision: str | Sequence[str] | None = "0002_security"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The 14 findings in CheXNet order (disagreement_finding indexes this tuple), as of this revision.
FINDINGS = (
    "atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule", "pneumonia",
    "pneumothorax", "consolidation", "edema", "emphysema", "fibrosis", "pleural_thickening", "hernia",
)  # fmt: skip


def _shuffle_key_sql() -> str:
    """db.models.SHUFFLE_KEY_SQL as of this revision (the index is only used when the texts match)."""

    def xor(a: str, b: str) -> str:
        return f"(({a}) | ({b})) - (({a}) & ({b}))"

    mask = "4294967295"
    first = f"(id * 2654435761) & {mask}"
    mixed = xor(first, f"({first}) >> 16")
    second = f"(({mixed}) * 73244475) & {mask}"
    return f"({xor(second, f'({second}) >> 16')})"


def _postgresql() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def _now() -> object:
    now = dt.datetime.now(dt.UTC)
    return now if _postgresql() else now.replace(tzinfo=None).isoformat(sep=" ")


def _fill_reviewed_labels() -> None:
    votes = ", ".join(f"SUM(CASE WHEN {f} AND NOT exclude THEN 1 ELSE 0 END) AS {f}" for f in FINDINGS)
    findings = ", ".join(f"COALESCE(a.{f}, 2 * v.{f} > v.n - v.excluded)" for f in FINDINGS)
    op.get_bind().execute(
        sa.text(
            f"INSERT INTO reviewed_labels (image_id, source, n_reviews, exclude, {', '.join(FINDINGS)}, "
            "updated_at) "
            "SELECT ids.image_id, CASE WHEN a.image_id IS NULL THEN 'consensus' ELSE 'adjudication' END, "
            f"COALESCE(v.n, 0), COALESCE(a.exclude, 2 * v.excluded > v.n), {findings}, :now "
            "FROM (SELECT image_id FROM reviews UNION SELECT image_id FROM adjudications) ids "
            "LEFT JOIN (SELECT image_id, COUNT(*) AS n, "
            "SUM(CASE WHEN exclude THEN 1 ELSE 0 END) AS excluded, "
            f"{votes} FROM reviews GROUP BY image_id) v ON v.image_id = ids.image_id "
            "LEFT JOIN adjudications a ON a.image_id = ids.image_id"
        ),
        {"now": _now()},
    )


def _score_predictions() -> None:
    def probability(index: int) -> str:
        if _postgresql():
            return f"CAST(p.probabilities ->> {index} AS FLOAT)"
        return f"CAST(json_extract(p.probabilities, '$[{index}]') AS FLOAT)"

    gaps = ", ".join(
        f"abs({probability(i)} - CASE WHEN COALESCE(r.{f}, n.{f}) THEN 1.0 ELSE 0.0 END) AS g{i}"
        for i, f in enumerate(FINDINGS)
    )
    columns = ", ".join(f"g{i}" for i in range(len(FINDINGS)))
    largest = "GREATEST" if _postgresql() else "max"
    first_largest = " ".join(f"WHEN g{i} = score THEN {i}" for i in range(len(FINDINGS)))
    # The gaps as a materialized CTE: inlined, each row's JSON would be parsed some 200 times.
    op.execute(
        f"WITH g AS MATERIALIZED (SELECT p.id AS pid, {gaps} FROM predictions p "
        "LEFT JOIN reviewed_labels r ON r.image_id = p.image_id "
        "LEFT JOIN nlp_labels n ON n.image_id = p.image_id AND n.source = 'nlp') "
        "UPDATE predictions SET disagreement = s.score, disagreement_finding = s.finding FROM ("
        f"SELECT pid, score, CASE {first_largest} ELSE 0 END AS finding FROM ("
        f"SELECT pid, {largest}({columns}) AS score, {columns} FROM g) ranked) s "
        "WHERE predictions.id = s.pid"
    )


def upgrade() -> None:
    op.create_table(
        "reviewed_labels",
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("n_reviews", sa.Integer(), nullable=False),
        sa.Column("exclude", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        *(sa.Column(f, sa.Boolean(), nullable=False) for f in FINDINGS),
        sa.CheckConstraint("source IN ('adjudication', 'consensus')", name=op.f("ck_reviewed_labels_source")),
        sa.ForeignKeyConstraint(
            ["image_id"], ["images.id"], name=op.f("fk_reviewed_labels_image_id_images"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("image_id", name=op.f("pk_reviewed_labels")),
    )
    _fill_reviewed_labels()

    op.add_column("predictions", sa.Column("disagreement", sa.Float(), nullable=True))
    op.add_column("predictions", sa.Column("disagreement_finding", sa.SmallInteger(), nullable=True))
    _score_predictions()
    op.create_index(
        "ix_predictions_disagreement",
        "predictions",
        ["model_version_id", sa.text("disagreement DESC"), "image_id"],
        unique=False,
    )

    op.create_index("ix_images_shuffle_key", "images", [sa.text(_shuffle_key_sql())], unique=False)
    for finding in FINDINGS:
        where = sa.text(f"source = 'nlp' AND {finding}")
        op.create_index(
            f"ix_nlp_labels_{finding}_positive", "nlp_labels", ["source", "image_id"], unique=False,
            sqlite_where=where, postgresql_where=where,
        )  # fmt: skip
    op.create_index("ix_label_events_at", "label_events", ["at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_label_events_at", table_name="label_events")
    for finding in FINDINGS:
        op.drop_index(f"ix_nlp_labels_{finding}_positive", table_name="nlp_labels")
    op.drop_index("ix_images_shuffle_key", table_name="images")
    op.drop_index("ix_predictions_disagreement", table_name="predictions")
    # Plain ALTER TABLE ... DROP COLUMN (SQLite >= 3.35): no table rebuild.
    op.execute("ALTER TABLE predictions DROP COLUMN disagreement_finding")
    op.execute("ALTER TABLE predictions DROP COLUMN disagreement")
    op.drop_table("reviewed_labels")
