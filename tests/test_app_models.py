"""AppTest of the Models & ROC page's registry actions on a real database: promote, roll back, queue an
evaluation, and a version name from a model folder shown as plain text."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.paths import REPO_ROOT, active_model_dir
from db.engine import dispose_engine, session_scope
from db.jobs import list_jobs
from db.registry import get_active_version, list_versions, register_existing_model
from tests.admin_helpers import make_studio, synthetic_dataset, tiny_model
from webapp.auth import SessionUser
from webapp.formatting import plain

MODELS_PAGE = str(REPO_ROOT / "webapp" / "views" / "models.py")
IMPORTED_NAME = "[Re-login](https:evil.example)"  # a card name chosen by whoever made the folder
UNESCAPED_LINK = re.compile(r"(?<!\\)\[[^\]]*(?<!\\)\]\(")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")  # shown literally, whatever it holds


@pytest.fixture(scope="module")
def synthetic_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_dataset(tmp_path_factory.mktemp("cxr14"))


@pytest.fixture
def studio(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, synthetic_data: Path, fast_password_hashing):
    """The studio ("tiny-base" active) plus a second, imported version with a hostile name."""
    made = make_studio(tmp_path, monkeypatch, synthetic_data)
    with session_scope(made.engine) as session:
        register_existing_model(session, tiny_model(tmp_path / "models", IMPORTED_NAME, seed=1))
    yield made
    dispose_engine(made.url)


def markdown_texts(at: AppTest) -> list[str]:
    """Every text the page renders as markdown, code spans left out."""
    kinds = (at.title, at.subheader, at.markdown, at.caption, at.success, at.info, at.warning, at.error)
    texts = [element.value for kind in kinds for element in kind] + [e.label for e in at.expander]
    return [CODE_SPAN.sub("", text) for text in texts]


def open_page(studio) -> AppTest:
    at = AppTest.from_file(MODELS_PAGE, default_timeout=60)
    at.session_state["user"] = SessionUser(studio.admin_id, "boss", "admin")
    at.run()
    assert not at.exception, at.exception
    return at


def test_promote_roll_back_and_evaluate_with_an_imported_name(studio) -> None:
    at = open_page(studio)
    with session_scope(studio.engine, read_only=True) as session:
        imported = next(v.id for v in list_versions(session) if v.name == IMPORTED_NAME)
    at.selectbox(key="registry_version").set_value(imported).run()
    assert [e.label for e in at.expander] == [f"Details of {plain(IMPORTED_NAME)}"]

    at.button(key="promote").click().run()
    assert not at.exception and not at.error
    assert f"{plain(IMPORTED_NAME)} is now the active model" in at.success[0].value
    with session_scope(studio.engine, read_only=True) as session:
        assert get_active_version(session).name == IMPORTED_NAME
    assert active_model_dir().name == IMPORTED_NAME  # what the Predict page loads now
    assert not [text for text in markdown_texts(at) if UNESCAPED_LINK.search(text)]

    at.button(key="rollback").click().run()
    assert "tiny-base is active again (rolled back)" in at.success[0].value
    with session_scope(studio.engine, read_only=True) as session:
        assert get_active_version(session).name == "tiny-base"

    at.selectbox(key="registry_version").set_value(imported).run()
    at.button(key="evaluate").click().run()
    assert not at.exception and not at.error
    assert f"Job #1 queued: evaluate {plain(IMPORTED_NAME)}" in at.success[0].value
    with session_scope(studio.engine, read_only=True) as session:
        [job] = list_jobs(session)
        assert job.kind == "evaluate" and job.params["version_id"] == imported
        assert job.created_by_id == studio.admin_id
    assert not [text for text in markdown_texts(at) if UNESCAPED_LINK.search(text)]
