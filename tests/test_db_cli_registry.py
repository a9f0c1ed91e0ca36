"""`python -m db promote VERSION --by USERNAME` and `python -m db rollback`, on a real SQLite database
with real model folders: who and why land in registry_events, the ACTIVE pointer follows, and every
refusal is exit 1 with one sentence on stderr and nothing changed."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine

from core.paths import active_model_dir
from db.__main__ import main
from db.accounts import create_user, set_active
from db.engine import session_scope
from db.registry import (
    get_active_version,
    get_version,
    register_existing_model,
    register_model_version,
    registry_events,
)
from tests.admin_helpers import tiny_model
from tests.db_fixtures import TEST_PASSWORD


@pytest.fixture(scope="module")
def model_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two real model folders, made once (each is a full DenseNet-121)."""
    root = tmp_path_factory.mktemp("models")
    return {name: tiny_model(root, name, seed=i).resolve() for i, name in enumerate(("one", "two"))}


@pytest.fixture
def registry_db(
    sqlite_engine: Engine,
    fast_password_hashing: None,
    model_folders: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> str:
    """The database URL: "one" and "two" registered (none promoted), admin "boss", clinician "reader"."""
    monkeypatch.setenv("CHEXNET_HOME", str(tmp_path / "home"))  # where the ACTIVE pointer is written
    monkeypatch.delenv("CHEXNET_MODEL", raising=False)
    with session_scope(sqlite_engine) as session:
        create_user(session, "boss", TEST_PASSWORD, role="admin")
        create_user(session, "reader", TEST_PASSWORD, role="clinician")
        for folder in model_folders.values():
            register_existing_model(session, folder)
    return sqlite_engine.url.render_as_string(hide_password=False)


def _events(url: str) -> list[tuple]:
    with session_scope(url, read_only=True) as session:
        return [(e.action, e.version, e.previous, e.by, e.reason) for e in registry_events(session)]


def _active(url: str) -> str | None:
    with session_scope(url, read_only=True) as session:
        active = get_active_version(session)
        return active.name if active is not None else None


def test_promote_records_who_and_why_and_rollback_goes_back(
    registry_db: str, model_folders, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = registry_db
    assert main(["--database-url", url, "promote", "one", "--by", "BOSS", "--reason", "first one"]) == 0
    [line] = capsys.readouterr().out.splitlines()
    assert line.startswith("Now serving 'one' (version id ")
    assert line.endswith("); recorded as promoted by boss.")
    with session_scope(url, read_only=True) as session:
        two_id = get_version(session, "two").id  # by id this time
    assert main(["--database-url", url, "promote", str(two_id), "--by", "boss", "--reason", "better"]) == 0
    assert f"Now serving 'two' (version id {two_id}, replacing 'one');" in capsys.readouterr().out
    assert _events(url) == [
        ("promote", "two", "one", "boss", "better"),
        ("promote", "one", None, "boss", "first one"),
    ]
    assert active_model_dir() == model_folders["two"]  # what the Predict page and the CLIs load

    assert main(["--database-url", url, "promote", "two", "--by", "boss"]) == 0
    assert "already the served model; nothing changed" in capsys.readouterr().out
    assert len(_events(url)) == 2

    assert main(["--database-url", url, "rollback", "--reason", "two misses effusions"]) == 0
    [line] = capsys.readouterr().out.splitlines()
    assert line.startswith("Now serving 'one' (version id ")
    assert line.endswith(", replacing 'two'); recorded as a roll back from the command line.")
    assert _events(url)[0] == ("rollback", "one", "two", None, "two misses effusions")
    assert _active(url) == "one" and active_model_dir() == model_folders["one"]

    monkeypatch.setenv("CHEXNET_MODEL", str(model_folders["two"]))  # it overrides the registry: said so
    assert main(["--database-url", url, "promote", "two", "--by", "boss"]) == 0
    [line] = capsys.readouterr().out.splitlines()
    assert line.endswith(
        f"Note: CHEXNET_MODEL is set here, so processes with it serve {model_folders['two']} instead."
    )


def test_refusals_exit_1_with_one_sentence_and_change_nothing(
    registry_db: str, sqlite_engine: Engine, tmp_path: Path, capsys
) -> None:
    url = registry_db
    with session_scope(sqlite_engine) as session:
        register_model_version(session, "gone", str(tmp_path / "no-such-model"))
        retired = create_user(session, "old-admin", TEST_PASSWORD, role="admin")
        set_active(session, retired.id, False)
    assert main(["--database-url", url, "promote", "one", "--by", "boss"]) == 0
    capsys.readouterr()
    refusals = {
        ("promote", "two", "--by", "nobody"): "There is no user named 'nobody'.",
        ("promote", "two", "--by", "reader"): "'reader' is not an admin; only an active admin may promote",
        ("rollback", "--by", "old-admin"): "'old-admin' is a deactivated account; only an active admin may",
        ("promote", "three", "--by", "boss"): "There is no model version 'three'.",
        ("promote", "gone", "--by", "boss"): "'gone' cannot be promoted: its model folder is unreadable",
        ("rollback", "--by", "boss"): "No earlier active model version to roll back to.",
    }
    for argv, sentence in refusals.items():
        assert main(["--database-url", url, *argv]) == 1, argv
        captured = capsys.readouterr()
        [line] = captured.err.splitlines()
        assert line.startswith(f"error: {sentence}"), (argv, line)
        assert not captured.out
    assert _events(url) == [("promote", "one", None, "boss", "")]
    assert _active(url) == "one"

    with pytest.raises(SystemExit) as usage:  # promote says who does it
        main(["--database-url", url, "promote", "two"])
    assert usage.value.code == 2 and "--by" in capsys.readouterr().err
