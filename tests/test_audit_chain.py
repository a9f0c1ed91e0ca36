"""The label events' sha256 chain: intact after saves, broken (and named) after an edit or a deletion
made with the append-only triggers dropped, filled in by the migration for older databases."""

from __future__ import annotations

import subprocess
import sys

import pytest
from sqlalchemy import Engine, select, text

from core.paths import REPO_ROOT
from db.accounts import create_user
from db.audit import GENESIS_HASH, event_digest, verify_chain
from db.engine import session_scope
from db.migrate import downgrade, upgrade
from db.models import Image, LabelEvent, User
from db.reviews import adjudicate, save_review


def _drop_triggers(engine: Engine) -> None:
    with engine.begin() as connection:
        if engine.dialect.name == "sqlite":
            connection.exec_driver_sql("DROP TRIGGER label_events_no_update")
            connection.exec_driver_sql("DROP TRIGGER label_events_no_delete")
        else:
            connection.exec_driver_sql("DROP TRIGGER label_events_no_change ON label_events")


def _save_some(engine: Engine, make_user, make_images) -> list[int]:
    reader, admin = make_user("reader"), make_user("boss", role="admin")
    images = make_images(3)
    with session_scope(engine) as session:
        for n, image_id in enumerate(images):
            save_review(session, image_id, reader, {"Effusion": True}, False, False, f"first {n}", None)
        save_review(session, images[0], reader, {"Mass": True}, False, False, "changed my mind", 1)
        adjudicate(session, images[1], admin, {}, True, False, "normal", None)
    with session_scope(engine, read_only=True) as session:
        return list(session.scalars(select(LabelEvent.id).order_by(LabelEvent.id)))


def _cli_verify(engine: Engine) -> subprocess.CompletedProcess[str]:
    url = engine.url.render_as_string(hide_password=False)
    return subprocess.run(
        [sys.executable, "-m", "db", "--database-url", url, "verify-audit"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


@pytest.fixture
def make_sqlite_reader(sqlite_engine: Engine, fast_password_hashing: None):
    def make() -> list[int]:
        with session_scope(sqlite_engine) as session:
            reader = create_user(session, "solo-reader", "solo reader passphrase")
            images = [Image(image_index=f"{n:08d}_000.png", source="dataset") for n in range(2)]
            session.add_all(images)
            session.flush()
            for image in images:
                save_review(session, image.id, reader, {"Nodule": True}, False, False, "", None)
        with session_scope(sqlite_engine, read_only=True) as session:
            return list(session.scalars(select(LabelEvent.id).order_by(LabelEvent.id)))

    return make


def test_saves_build_an_intact_chain(engine: Engine, make_user, make_images) -> None:
    ids = _save_some(engine, make_user, make_images)
    with session_scope(engine, read_only=True) as session:
        events = session.scalars(select(LabelEvent).order_by(LabelEvent.id)).all()
        report = verify_chain(session)
    assert events[0].prev_hash == GENESIS_HASH
    assert all(later.prev_hash == earlier.hash for earlier, later in zip(events, events[1:], strict=False))
    assert len({e.hash for e in events}) == len(ids) == 5
    assert report.ok and report.checked == 5 and report.head == events[-1].hash
    assert "Audit trail OK: 5 label events" in report.summary()


def test_an_edit_with_the_triggers_dropped_is_caught(engine: Engine, make_user, make_images) -> None:
    ids = _save_some(engine, make_user, make_images)
    _drop_triggers(engine)
    with session_scope(engine) as session:  # rewrite what a reader decided, as a database owner could
        session.execute(
            text("UPDATE label_events SET comment = 'nothing to see' WHERE id = :id"), {"id": ids[2]}
        )
    with session_scope(engine, read_only=True) as session:
        report = verify_chain(session)
    assert not report.ok and report.broken_event_id == ids[2] and report.checked == 2
    assert "edited" in report.problem
    result = _cli_verify(engine)
    assert result.returncode == 1
    assert f"BROKEN at label event {ids[2]}" in result.stderr and "Traceback" not in result.stderr


def test_a_deleted_event_is_caught_at_the_next_one(engine: Engine, make_user, make_images) -> None:
    ids = _save_some(engine, make_user, make_images)
    _drop_triggers(engine)
    with session_scope(engine) as session:
        session.execute(text("DELETE FROM label_events WHERE id = :id"), {"id": ids[1]})
    with session_scope(engine, read_only=True) as session:
        report = verify_chain(session)
    assert report.broken_event_id == ids[2] and "link to the previous event" in report.problem


def test_a_recomputed_hash_does_not_hide_an_edit_from_the_next_link(
    sqlite_engine: Engine, make_sqlite_reader
) -> None:
    """An attacker who edits a row and fixes its own hash still breaks the next event's link."""
    ids = make_sqlite_reader()
    _drop_triggers(sqlite_engine)
    with session_scope(sqlite_engine) as session:
        event = session.get(LabelEvent, ids[0])
        event.comment = "forged"
        fields = {c: getattr(event, c) for c in ("image_id", "user_id", "at", "kind", "version")}
        fields.update(before=event.before, after=event.after, comment="forged")
        event.hash = event_digest(event.prev_hash, fields)
    with session_scope(sqlite_engine, read_only=True) as session:
        report = verify_chain(session)
    assert report.broken_event_id == ids[1]


def test_cli_verify_audit_reports_ok(sqlite_engine: Engine, make_sqlite_reader) -> None:
    make_sqlite_reader()
    result = _cli_verify(sqlite_engine)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Audit trail OK: 2 label events")


def test_migration_chains_existing_events_and_keys_usernames(engine: Engine) -> None:
    """A database made at revision 0001 (with `Admin` beside `admin`) upgrades to a valid chain."""
    downgrade(engine, "0001_initial")
    now = "2026-11-30 10:00:00.123456"
    with engine.begin() as connection:
        for name in ("admin", "Admin", "reader"):
            connection.execute(
                text(
                    "INSERT INTO users (username, password_hash, role, active, created_at) "
                    "VALUES (:name, 'x', 'clinician', true, :now)"
                ),
                {"name": name, "now": now},
            )
        connection.execute(
            text(
                "INSERT INTO images (image_index, source, created_at) "
                "VALUES ('00000001_000.png', 'dataset', :now)"
            ),
            {"now": now},
        )
        for version in (1, 2, 3):
            connection.execute(
                text(
                    "INSERT INTO label_events (image_id, user_id, at, kind, version, before, after, comment) "
                    "VALUES (1, 3, :now, 'review', :v, NULL, :after, '')"
                ),
                {"now": now, "v": version, "after": f'{{"version": {version}, "comment": "é"}}'},
            )
    upgrade(engine)
    with session_scope(engine, read_only=True) as session:
        keys = dict(session.execute(select(User.username, User.username_key)).all())
        report = verify_chain(session)
    assert keys["admin"] == "admin" and keys["Admin"] == "admin#2" and keys["reader"] == "reader"
    assert report.ok and report.checked == 3
    with pytest.raises(Exception, match="append-only"):  # the triggers are back after the fill
        with session_scope(engine) as session:
            session.execute(text("UPDATE label_events SET comment = 'x'"))
