"""The readers' label SR last written back for each imported instance (issue 18): one new column.

pacs_instances.label_sr_uid: the SOP Instance UID (a keyed hash, core.imaging.dicom_sr.label_sr_uids) of
the last label SR sent for the instance, so a changed label names it as its predecessor and an
unchanged one is not sent again.

Revision ID: 0011_pacs_label_sr
Revises: 0010_pacs_screen
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011_pacs_label_sr"
down_revision: str | Sequence[str] | None = "0010_pacs_screen"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("pacs_instances", sa.Column("label_sr_uid", sa.String(length=64), nullable=True))


def downgrade() -> None:
    op.execute("ALTER TABLE pacs_instances DROP COLUMN label_sr_uid")  # SQLite >= 3.35: no rebuild
