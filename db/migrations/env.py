"""Alembic environment: run by db.migrate with a connection in `config.attributes["connection"]`."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import context

from db.models import Base, UTCDateTime

config = context.config
target_metadata = Base.metadata


def _render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    # Migrations store plain timezone-aware DateTime; UTCDateTime only converts values in Python.
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _configure(**kwargs: Any) -> None:
    context.configure(
        target_metadata=target_metadata,
        compare_type=True,
        render_item=_render_item,
        **kwargs,
    )


def run_migrations_offline() -> None:
    from db.engine import default_url

    url = config.get_main_option("sqlalchemy.url") or default_url()
    _configure(url=url, literal_binds=True, render_as_batch=url.startswith("sqlite"))
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        # Plain `alembic` command line use: a connection to the default database, without migrating it
        # on engine creation (that is what this run does).
        from db.engine import create_configured_engine, default_url

        engine = create_configured_engine(default_url())
        with engine.begin() as connection:
            _run_with(connection)
        engine.dispose()
    else:
        _run_with(connection)


def _run_with(connection: sa.Connection) -> None:
    # SQLite cannot ALTER most things; batch mode rewrites the table instead.
    _configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
