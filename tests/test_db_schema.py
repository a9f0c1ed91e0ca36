"""Engine settings and migrations on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import DBAPIError

from db.engine import default_url, dispose_engine, get_engine, normalize_url, session_scope
from db.migrate import current_revision, downgrade, head_revision, upgrade
from db.models import Base, LabelEvent, User

EXPECTED_TABLES = {
    "users", "images", "nlp_labels", "boxes", "reviews", "label_events", "adjudications",
    "predictions", "model_versions", "training_jobs", "user_sessions", "login_attempts",
    "pacs_connections", "pacs_instances",
}  # fmt: skip


def test_migrations_create_every_table_and_match_the_models(engine: Engine) -> None:
    tables = set(inspect(engine).get_table_names())
    assert EXPECTED_TABLES <= tables
    assert "alembic_version" in tables
    assert current_revision(engine) == head_revision()
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []


def test_upgrade_is_idempotent_and_downgrade_removes_everything(engine: Engine) -> None:
    upgrade(engine)  # already at head: nothing to do, no error
    assert current_revision(engine) == head_revision()
    downgrade(engine, "base")
    assert EXPECTED_TABLES.isdisjoint(inspect(engine).get_table_names())
    upgrade(engine)
    assert EXPECTED_TABLES <= set(inspect(engine).get_table_names())


def test_label_events_refuse_update_and_delete(engine: Engine, make_user, make_images) -> None:
    user = make_user("reader")
    [image_id] = make_images(1)
    with session_scope(engine) as session:
        session.add(LabelEvent(image_id=image_id, user_id=user.id, kind="review", version=1, after={"x": 1}))
    for statement in ("UPDATE label_events SET comment = 'changed'", "DELETE FROM label_events"):
        with pytest.raises(DBAPIError, match="append-only"):
            with session_scope(engine) as session:
                session.execute(text(statement))
    with session_scope(engine) as session:
        assert session.query(LabelEvent).one().comment == ""


def test_sqlite_connections_use_wal_foreign_keys_and_busy_timeout(sqlite_engine: Engine) -> None:
    with sqlite_engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000


def test_foreign_keys_are_enforced(engine: Engine) -> None:
    with pytest.raises(DBAPIError):
        with session_scope(engine) as session:
            session.add(LabelEvent(image_id=12345, user_id=67890, kind="review", version=1, after={}))


def test_session_scope_commits_and_rolls_back(engine: Engine) -> None:
    with session_scope(engine) as session:
        session.add(User(username="kept", password_hash="x", role="clinician"))
    with pytest.raises(RuntimeError):
        with session_scope(engine) as session:
            session.add(User(username="dropped", password_hash="x", role="clinician"))
            session.flush()
            raise RuntimeError("boom")
    with session_scope(engine, read_only=True) as session:
        assert [u.username for u in session.query(User)] == ["kept"]


def test_get_engine_is_cached_per_url_across_threads(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    engines: list[Engine] = []
    barrier = threading.Barrier(8)

    def grab() -> None:
        barrier.wait()
        engines.append(get_engine(url))

    threads = [threading.Thread(target=grab) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert len(engines) == 8 and len({id(e) for e in engines}) == 1
        assert current_revision(engines[0]) == head_revision()
    finally:
        dispose_engine(url)


def test_default_url_follows_database_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("CHEXNET_HOME", str(tmp_path))
    assert default_url() == f"sqlite:///{tmp_path / 'chexnet.db'}"
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:p@db.example:5432/chexnet")
    assert default_url() == "postgresql+psycopg://u:p@db.example:5432/chexnet"
    assert normalize_url("postgres://h/db") == "postgresql+psycopg://h/db"
    assert normalize_url("sqlite:///x.db") == "sqlite:///x.db"


def test_default_database_is_created_and_migrated_under_chexnet_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("CHEXNET_HOME", str(tmp_path))
    engine = get_engine()
    try:
        assert (tmp_path / "chexnet.db").exists()
        assert EXPECTED_TABLES <= set(inspect(engine).get_table_names())
    finally:
        dispose_engine(default_url())


def test_sqlite_read_only_sessions_do_not_wait_for_a_writer(sqlite_engine: Engine) -> None:
    with session_scope(sqlite_engine) as writer:
        writer.add(User(username="pending", password_hash="x", role="clinician"))
        writer.flush()  # the writer now holds SQLite's write lock until the block ends
        with session_scope(sqlite_engine, read_only=True) as reader:
            assert reader.query(User).count() == 0  # the committed snapshot, read without waiting
    with session_scope(sqlite_engine, read_only=True) as reader:
        assert reader.query(User).count() == 1
