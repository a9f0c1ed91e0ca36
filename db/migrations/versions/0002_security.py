"""Security: case-insensitive usernames, login sessions, login attempts, the audit hash chain.

- users.username_key: the lower-cased username, unique. Where an older database already holds names
  that differ only in case, the oldest account keeps the plain key and the others get "name#id"
  (they then log in only after an admin gives them a new name; nothing is deleted).
- user_sessions, login_attempts: new tables (db.sessions, db.login_throttle).
- label_events.prev_hash / hash: the sha256 chain of db.audit, computed here for existing events
  (the append-only triggers are lifted for that one UPDATE and put back).

Columns are added as NOT NULL DEFAULT '' so SQLite needs no table rebuild (a rebuild of `users` would
trip the foreign keys that point at it, and one of `label_events` would drop its triggers).

Revision ID: 0002_security
Revises: 0001_initial
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_security"
down_revision: str | Sequence[str] | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_APPEND_ONLY_MESSAGE = "label_events is an append-only audit trail"


def _sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"


def _fill_username_keys() -> None:
    bind = op.get_bind()
    taken: set[str] = set()
    for user_id, username in bind.execute(sa.text("SELECT id, username FROM users ORDER BY id")):
        key = username.lower()
        if key in taken:
            key = f"{key}#{user_id}"[:64]  # '#' is never in a valid username: no clash with a real one
        taken.add(key)
        bind.execute(
            sa.text("UPDATE users SET username_key = :key WHERE id = :id"), {"key": key, "id": user_id}
        )


def _sqlite_append_only_triggers(create: bool) -> None:
    for action in ("UPDATE", "DELETE"):
        name = f"label_events_no_{action.lower()}"
        if create:
            op.execute(
                f"CREATE TRIGGER {name} BEFORE {action} ON label_events "
                f"BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY_MESSAGE}'); END"
            )
        else:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")


def _fill_event_hashes() -> None:
    """Chain the events that exist already, in id order (the triggers are lifted for this only)."""
    from db.audit import GENESIS_HASH, event_digest
    from db.models import UTCDateTime

    bind = op.get_bind()
    at_type = UTCDateTime()
    json_type = sa.JSON()
    events = sa.table(
        "label_events",
        sa.column("id", sa.Integer()),
        sa.column("image_id", sa.Integer()),
        sa.column("user_id", sa.Integer()),
        sa.column("at", at_type),
        sa.column("kind", sa.String()),
        sa.column("version", sa.Integer()),
        sa.column("before", json_type),
        sa.column("after", json_type),
        sa.column("comment", sa.Text()),
    )
    rows = bind.execute(sa.select(events).order_by(events.c.id)).mappings().all()
    if not rows:
        return
    if _sqlite():
        _sqlite_append_only_triggers(create=False)
    else:
        op.execute("ALTER TABLE label_events DISABLE TRIGGER label_events_no_change")
    previous = GENESIS_HASH
    for row in rows:
        digest = event_digest(previous, dict(row))
        bind.execute(
            sa.text("UPDATE label_events SET prev_hash = :prev, hash = :hash WHERE id = :id"),
            {"prev": previous, "hash": digest, "id": row["id"]},
        )
        previous = digest
    if _sqlite():
        _sqlite_append_only_triggers(create=True)
    else:
        op.execute("ALTER TABLE label_events ENABLE TRIGGER label_events_no_change")


def upgrade() -> None:
    op.add_column("users", sa.Column("username_key", sa.String(length=64), server_default="", nullable=False))
    _fill_username_keys()
    op.create_index("uq_users_username_key", "users", ["username_key"], unique=True)

    op.create_table(
        "user_sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("client_ip", sa.String(length=64), nullable=False),
        sa.Column("user_agent", sa.String(length=255), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_user_sessions_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_user_sessions")),
        sa.UniqueConstraint("token_sha256", name=op.f("uq_user_sessions_token_sha256")),
    )
    op.create_index("ix_user_sessions_user_id", "user_sessions", ["user_id"], unique=False)

    op.create_table(
        "login_attempts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("username_key", sa.String(length=64), nullable=False),
        sa.Column("client", sa.String(length=128), nullable=False),
        sa.Column("succeeded", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_login_attempts")),
    )
    op.create_index(
        "ix_login_attempts_username_key_at", "login_attempts", ["username_key", "at"], unique=False
    )
    op.create_index("ix_login_attempts_client_at", "login_attempts", ["client", "at"], unique=False)

    op.add_column(
        "label_events", sa.Column("prev_hash", sa.String(length=64), server_default="", nullable=False)
    )
    op.add_column("label_events", sa.Column("hash", sa.String(length=64), server_default="", nullable=False))
    _fill_event_hashes()
    op.create_index("uq_label_events_prev_hash", "label_events", ["prev_hash"], unique=True)


def _drop_column(table: str, column: str) -> None:
    if _sqlite():
        op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")  # SQLite >= 3.35, no rebuild
    else:
        op.drop_column(table, column)


def downgrade() -> None:
    op.drop_index("uq_label_events_prev_hash", table_name="label_events")
    _drop_column("label_events", "hash")
    _drop_column("label_events", "prev_hash")
    op.drop_index("ix_login_attempts_client_at", table_name="login_attempts")
    op.drop_index("ix_login_attempts_username_key_at", table_name="login_attempts")
    op.drop_table("login_attempts")
    op.drop_index("ix_user_sessions_user_id", table_name="user_sessions")
    op.drop_table("user_sessions")
    op.drop_index("uq_users_username_key", table_name="users")
    _drop_column("users", "username_key")
