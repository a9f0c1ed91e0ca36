"""Database engines and sessions.

The database is SQLite at `chexnet_home()/chexnet.db` (created with mode 0600) unless the environment
variable `DATABASE_URL` names another one (PostgreSQL: `postgresql+psycopg://user:password@host:5432/db`;
plain `postgres://` / `postgresql://` URLs are accepted and switched to the psycopg 3 driver).

    from db.engine import session_scope
    with session_scope() as session:      # commits at the end, rolls back on an exception
        ...

`get_engine()` caches one engine per URL (thread-safe) and brings the schema up to date with the
alembic migrations the first time a URL is used.

SQLite specifics, set on every connection: WAL journal (readers don't block the writer), foreign keys
ON, a 30 s busy timeout, and write transactions that start with `BEGIN IMMEDIATE`: a transaction
that reads and then writes would otherwise fail with "database is locked" when another writer
committed in between, which the busy timeout cannot wait out. `session_scope(read_only=True)` starts
a deferred transaction instead, for long reads that should not hold the write lock.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

from core import settings
from core.paths import chexnet_home

SQLITE_BUSY_TIMEOUT_MS = 30_000
SQLITE_FILE_MODE = 0o600  # the database holds password hashes and session digests
_BEGIN_OPTION = "chexnet_sqlite_begin"

_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def default_url() -> str:
    """DATABASE_URL if set, else the SQLite file under CHEXNET_HOME."""
    env_url = settings.database_url()
    if env_url:
        return normalize_url(env_url)
    return f"sqlite:///{chexnet_home() / 'chexnet.db'}"


def normalize_url(url: str) -> str:
    """Use the psycopg 3 driver for PostgreSQL URLs that name no driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def create_configured_engine(url: str) -> Engine:
    """A new engine with this project's connection settings; no caching, no migrations."""
    parsed = make_url(normalize_url(url))
    if parsed.get_backend_name() == "sqlite":
        return _create_sqlite_engine(parsed)
    return create_engine(parsed, pool_pre_ping=True, pool_size=10, max_overflow=20)


def _make_private_sqlite_file(database: str) -> None:
    """Create the database file owner-only before SQLite does (its -wal/-shm files copy the mode);
    an existing file readable by others is tightened."""
    path = Path(database)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SQLITE_FILE_MODE)
    except FileExistsError:
        if path.stat().st_mode & 0o077 and path.stat().st_uid == os.getuid():
            os.chmod(path, SQLITE_FILE_MODE)
        return
    except OSError:
        return  # e.g. a missing folder: SQLite says so in its own words on connect
    os.close(descriptor)  # an empty file is a valid empty SQLite database


def _create_sqlite_engine(parsed: Any) -> Engine:
    in_memory = parsed.database in (None, "", ":memory:")
    if not in_memory and not str(parsed.database).startswith("file:"):
        _make_private_sqlite_file(parsed.database)
    connect_args = {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
    kwargs: dict[str, Any] = {"connect_args": connect_args}
    if in_memory:
        kwargs["poolclass"] = StaticPool  # one shared connection, else every connection is a new empty DB
    else:
        kwargs.update(pool_size=10, max_overflow=20)
    engine = create_engine(parsed, **kwargs)

    @event.listens_for(engine, "connect")
    def _configure_sqlite_connection(dbapi_connection: Any, _record: Any) -> None:
        # Take over transaction control from the sqlite3 module, which would otherwise BEGIN lazily
        # (deferred) on its own; "_begin_sqlite_transaction" below emits the BEGIN.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys = ON")
        if not in_memory:
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")  # durable at checkpoints; safe with WAL
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin_sqlite_transaction(connection: Any) -> None:
        mode = connection.get_execution_options().get(_BEGIN_OPTION, "IMMEDIATE")
        connection.exec_driver_sql(f"BEGIN {mode}")

    return engine


def get_engine(url: str | None = None, *, migrate: bool = True) -> Engine:
    """The engine for `url` (default: `default_url()`), created once per URL and process.

    On first use of a URL the schema is migrated to the newest alembic revision (`migrate=False`
    skips that, e.g. for tools that inspect an old database).
    """
    key = normalize_url(url) if url else default_url()
    engine = _engines.get(key)
    if engine is not None:
        return engine
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            engine = create_configured_engine(key)
            if migrate:
                from db.migrate import upgrade  # late import: db.migrate imports the alembic env

                upgrade(engine)
            _engines[key] = engine
    return engine


def dispose_engines() -> None:
    """Close every cached engine's connections and forget them (tests, forked workers)."""
    with _engines_lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def dispose_engine(url: str) -> None:
    with _engines_lock:
        engine = _engines.pop(normalize_url(url), None)
    if engine is not None:
        engine.dispose()


@contextmanager
def session_scope(engine: Engine | str | None = None, *, read_only: bool = False) -> Iterator[Session]:
    """A session whose transaction commits when the block ends and rolls back on an exception.

    Objects loaded in the block stay readable after it (expire_on_commit=False). `engine` may be an
    Engine, a URL or None (the default database). `read_only=True` only changes how SQLite begins
    the transaction (deferred, not holding the write lock); writes in such a session may fail.
    """
    if engine is None or isinstance(engine, str):
        engine = get_engine(engine)
    if read_only and engine.dialect.name == "sqlite":
        engine = engine.execution_options(**{_BEGIN_OPTION: "DEFERRED"})
    session = Session(engine, expire_on_commit=False)
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
