"""Changing and removing a PACS connection (issue 18): rotated credentials and a moved server are tried
against the real Orthanc before they are saved, the stored secret is kept when the field is left empty,
and a connection that imported anything is kept (its images' links back to the PACS depend on it)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine
from streamlit.testing.v1 import AppTest

from core.paths import REPO_ROOT
from db import accounts, pacs
from db.engine import dispose_engine, get_engine, session_scope
from jobs.dicomweb import SearchCriteria
from jobs.pacs_import import client_for, import_instances
from tests.db_fixtures import TEST_PASSWORD
from tests.orthanc_fixtures import OrthancServer, store_sample_studies
from webapp.auth import SessionUser


@pytest.fixture(autouse=True)
def own_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("CHEXNET_HOME", str(home))
    return home


def _connection(engine: Engine, orthanc: OrthancServer, name: str = "Orthanc") -> int:
    with session_scope(engine) as session:
        return pacs.create_connection(
            session, name, orthanc.dicomweb_url, auth="basic", username=orthanc.user, secret="old-password"
        ).id


def test_update_keeps_or_replaces_the_secret_and_delete_refuses_a_used_connection(
    sqlite_engine: Engine, orthanc: OrthancServer, sample_dir: Path
) -> None:
    connection_id = _connection(sqlite_engine, orthanc)
    with session_scope(sqlite_engine) as session:  # a moved server, same credentials: the secret stays
        pacs.update_connection(
            session, connection_id, orthanc.dicomweb_url + "/", auth="basic", username=orthanc.user
        )
    with session_scope(sqlite_engine, read_only=True) as session:
        row = pacs.connection_row(session, connection_id)
        assert pacs.connection_secret(row) == "old-password" and row.base_url.endswith("/")
    with session_scope(sqlite_engine) as session:  # rotated: the new one is sealed, never stored plain
        pacs.update_connection(
            session, connection_id, orthanc.dicomweb_url, auth="basic", username=orthanc.user,
            secret=orthanc.password,
        )  # fmt: skip
    with session_scope(sqlite_engine, read_only=True) as session:
        row = pacs.connection_row(session, connection_id)
        assert pacs.connection_secret(row) == orthanc.password and orthanc.password not in row.secret
        client_for(session, connection_id).check()  # the PACS takes the new credentials
    with session_scope(sqlite_engine) as session, pytest.raises(pacs.PacsConnectionError, match="token"):
        pacs.update_connection(session, connection_id, orthanc.dicomweb_url, auth="bearer")  # a new kind

    unused = _connection(sqlite_engine, orthanc, "Unused")
    with session_scope(sqlite_engine) as session:
        assert pacs.delete_connection(session, unused) == "Unused"
    store_sample_studies(orthanc, sample_dir, 1)
    assert import_instances(sqlite_engine, connection_id, SearchCriteria()).imported == 1
    with session_scope(sqlite_engine) as session, pytest.raises(pacs.PacsConnectionError, match="is kept"):
        pacs.delete_connection(session, connection_id)
    with session_scope(sqlite_engine, read_only=True) as session:
        assert [c.name for c in pacs.list_connections(session)] == ["Orthanc"]


def test_admin_changes_credentials_on_the_page_after_the_pacs_accepts_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, orthanc: OrthancServer, fast_password_hashing
) -> None:
    url = f"sqlite:///{tmp_path / 'studio.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    engine = get_engine(url)
    with session_scope(engine) as session:
        admin_id = accounts.create_user(session, "boss", TEST_PASSWORD, role="admin").id
    connection_id = _connection(engine, orthanc)
    try:
        at = AppTest.from_file(str(REPO_ROOT / "webapp" / "views" / "admin.py"), default_timeout=60)
        at.session_state["user"] = SessionUser(admin_id, "boss", "admin")
        at.run()
        at.toggle(key=f"pacs_edit_open_{connection_id}").set_value(True)
        at.run()
        assert not at.exception, at.exception

        def save(password: str) -> None:
            at.text_input(key=f"pacs_edit_secret_{connection_id}").set_value(password)
            next(b for b in at.button if b.label == "Save changes").click()
            at.run()
            assert not at.exception, at.exception

        save("")  # the stored (wrong) password is tried, refused: nothing changes
        assert "refused the user name or password" in at.error[0].value
        save("still-wrong")
        assert "refused the user name or password" in at.error[0].value
        with session_scope(engine, read_only=True) as session:
            assert pacs.connection_secret(pacs.connection_row(session, connection_id)) == "old-password"
        save(orthanc.password)
        assert not at.error and "Connection Orthanc changed; the PACS answered." in at.success[0].value
        shown = [e.value for kind in (at.markdown, at.caption, at.success, at.dataframe) for e in kind]
        assert orthanc.password not in str(shown)
        with session_scope(engine, read_only=True) as session:
            assert pacs.connection_secret(pacs.connection_row(session, connection_id)) == orthanc.password

        at.toggle(key=f"pacs_edit_open_{connection_id}").set_value(True)
        at.run()
        next(b for b in at.button if b.label == "Remove connection").click()
        at.run()
        assert not at.exception and "Connection Orthanc removed." in at.success[0].value
        with session_scope(engine, read_only=True) as session:
            assert pacs.list_connections(session) == []
    finally:
        dispose_engine(url)
