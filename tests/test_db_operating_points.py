"""Admin-set operating points (db.operating_points): versioned with who and why, append-only, the
latest per finding in use; and the registry's promotion records (who, why) on both backends."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.exc import DBAPIError

from db.engine import session_scope
from db.errors import NotFoundError
from db.operating_points import (
    OperatingPointError,
    current_operating_points,
    history,
    set_operating_point,
)
from db.registry import latest_events, promote, register_model_version, registry_events, rollback


def _version(engine: Engine, name: str = "v1") -> int:
    with session_scope(engine) as session:
        return register_model_version(session, name, f"/m/{name}").id


def test_latest_point_per_finding_is_in_use_and_history_keeps_every_one(engine: Engine, make_user) -> None:
    admin, other = make_user("boss", role="admin"), make_user("chief", role="admin")
    v1, v2 = _version(engine, "v1"), _version(engine, "v2")
    reason = "Screening: **miss** fewer <b>effusions</b>"  # stored as typed, markup and all
    with session_scope(engine) as session:
        set_operating_point(session, v1, "Effusion", 0.3, reason, admin)
        set_operating_point(session, v1, "Hernia", 0.9, "Rare; keep false alarms down.", admin)
        set_operating_point(session, v1, "Effusion", 0.25, "Lower still after the audit.", other)
        set_operating_point(session, v2, "Mass", 1.0, "Off for this version.", None)  # the command line

    with session_scope(engine, read_only=True) as session:
        statements: list[str] = []
        listener = lambda *args: statements.append(args[2])  # noqa: E731
        event.listen(engine, "before_cursor_execute", listener)
        try:
            current = current_operating_points(session, v1)
        finally:
            event.remove(engine, "before_cursor_execute", listener)
        # One query, whatever the number of findings set.
        assert len([s for s in statements if s.lstrip().upper().startswith("SELECT")]) == 1
        assert list(current) == ["Effusion", "Hernia"]  # FINDINGS order
        effusion = current["Effusion"]
        assert (effusion.threshold, effusion.set_by, effusion.reason) == (
            0.25,
            "chief",
            "Lower still after the audit.",
        )
        assert effusion.created_at.tzinfo is not None
        assert current["Hernia"].set_by == "boss"
        past = history(session, v1)
        assert [(p.finding, p.threshold, p.set_by) for p in past] == [
            ("Effusion", 0.25, "chief"),
            ("Hernia", 0.9, "boss"),
            ("Effusion", 0.3, "boss"),
        ]
        assert past[-1].reason == reason
        assert {f: p.set_by for f, p in current_operating_points(session, v2).items()} == {"Mass": None}
        assert current_operating_points(session, 9999) == {}


@pytest.mark.parametrize(
    ("finding", "threshold", "reason", "message"),
    [
        ("Effusions", 0.3, "why", "'Effusions' is not one of the 14 findings"),
        ("Effusion", 1.5, "why", "A threshold must be between 0 and 1; 1.5 is not."),
        ("Effusion", -0.01, "why", "A threshold must be between 0 and 1"),
        ("Effusion", float("nan"), "why", "A threshold must be between 0 and 1"),
        ("Effusion", "high", "why", "A threshold must be a number between 0 and 1, not 'high'."),
        ("Effusion", 0.3, "   ", "Say why this threshold is set: the reason is required."),
    ],
)
def test_bad_points_are_refused_with_one_sentence(
    sqlite_engine: Engine, finding, threshold, reason, message
) -> None:
    version = _version(sqlite_engine)
    with session_scope(sqlite_engine) as session:
        with pytest.raises(OperatingPointError) as refused:
            set_operating_point(session, version, finding, threshold, reason, None)
        assert message in str(refused.value)
        with pytest.raises(NotFoundError, match="no model version with id 999"):
            set_operating_point(session, 999, "Effusion", 0.3, "why", None)
        assert history(session, version) == []


def test_operating_points_and_registry_events_are_append_only(engine: Engine, make_user) -> None:
    version = _version(engine)
    with session_scope(engine) as session:
        set_operating_point(session, version, "Edema", 0.4, "why", None)
        promote(session, version)
    for table in ("operating_points", "registry_events"):
        for statement in (f"UPDATE {table} SET reason = 'changed'", f"DELETE FROM {table}"):
            with pytest.raises(DBAPIError, match="append-only"):
                with session_scope(engine) as session:
                    session.execute(text(statement))
    with session_scope(engine, read_only=True) as session:
        assert [p.reason for p in history(session, version)] == ["why"]


def test_promotions_and_roll_backs_record_who_and_why(engine: Engine, make_user) -> None:
    admin = make_user("boss", role="admin")
    a, b = _version(engine, "A"), _version(engine, "B")
    with session_scope(engine) as session:
        promote(session, a)  # by = None: the command line
        promote(session, b, by=admin, reason="Better on effusion.")
        promote(session, b, by=admin)  # already active: nothing happens, nothing is recorded
    with session_scope(engine) as session:
        rollback(session, by=admin, reason="Too many false alarms.")
    with session_scope(engine, read_only=True) as session:
        events = registry_events(session)
        assert [(e.action, e.version, e.previous, e.by, e.reason) for e in events] == [
            ("rollback", "A", "B", "boss", "Too many false alarms."),
            ("promote", "B", "A", "boss", "Better on effusion."),
            ("promote", "A", None, None, ""),
        ]
        assert events[-1].by_text == "command line" and events[0].by_text == "boss"
        assert [e.action for e in registry_events(session, b)] == ["promote"]
        latest = latest_events(session, a)
        assert set(latest) == {"promote", "rollback"} and latest["rollback"].by == "boss"
