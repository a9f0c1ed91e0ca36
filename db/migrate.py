"""Alembic migrations, configured in code (no alembic.ini): the scripts live in db/migrations/."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Any constant: PostgreSQL advisory lock that serialises concurrent upgrades (web app + worker start).
_PG_MIGRATION_LOCK_KEY = 0x43686558  # "CheX"


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("version_path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "db/migrations/versions holds no revision"
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision` in one transaction; a no-op when it is already there."""
    with engine.begin() as connection:
        # SQLite: the engine begins with BEGIN IMMEDIATE, which already serialises upgrades.
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK_KEY})
        command.upgrade(alembic_config(connection), revision)


def downgrade(engine: Engine, revision: str) -> None:
    with engine.begin() as connection:
        command.downgrade(alembic_config(connection), revision)


def make_revision(engine: Engine, message: str) -> None:
    """Autogenerate a revision from the difference between db.models and the database at `engine`."""
    with engine.begin() as connection:
        command.revision(alembic_config(connection), message=message, autogenerate=True)
