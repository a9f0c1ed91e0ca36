"""Shared pieces of the Review-area AppTests: the real NIH sample imported once per module into a
template database, a private copy per test, a small model, and helpers that drive the review page's
buttons the way a reader does (test modules import the fixtures by name)."""

from __future__ import annotations

import sqlite3

import pytest
import torch
from argon2 import PasswordHasher
from streamlit.testing.v1 import AppTest

from core.inference.artifact import new_card, save_artifact
from core.inference.models import create_model
from core.labels import FINDINGS
from core.paths import REPO_ROOT
from db import accounts
from db.engine import dispose_engine, get_engine, session_scope
from db.importer import import_chestxray14
from db.models import User
from webapp.auth import SessionUser

VIEWS = REPO_ROOT / "webapp" / "views"

REVIEW_PAGE = str(VIEWS / "review.py")
QUALITY_PAGE = str(VIEWS / "quality.py")
ADJUDICATE_PAGE = str(VIEWS / "adjudicate.py")
HISTORY_PAGE = str(VIEWS / "history.py")
ASSIGNMENTS_PAGE = str(VIEWS / "assignments.py")
USERS = {"alice": "clinician", "bob": "clinician", "root": "admin"}


@pytest.fixture(scope="module")
def template_db(tmp_path_factory, sample_dir):
    """The sample imported once per module (about 2 s); each test works on its own copy."""
    folder = tmp_path_factory.mktemp("review-template")
    url = f"sqlite:///{folder / 'template.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(accounts, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
        engine = get_engine(url)
        import_chestxray14(engine, sample_dir)
        with session_scope(engine) as session:
            for username, role in USERS.items():
                accounts.create_user(session, username, "correct horse battery", role=role)
    dispose_engine(url)
    return folder / "template.db"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(2)
    folder = tmp_path_factory.mktemp("models") / "review-apptest-model"
    save_artifact(create_model(), folder, new_card("review-apptest-model"))
    return folder


@pytest.fixture
def db_url(template_db, tmp_path, monkeypatch):
    """A private copy of the template database, used by the pages through DATABASE_URL; no model."""
    target = tmp_path / "chexnet.db"
    with sqlite3.connect(template_db) as source, sqlite3.connect(target) as copy:
        source.backup(copy)
    url = f"sqlite:///{target}"
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("CHEXNET_HOME", str(tmp_path))
    monkeypatch.delenv("CHEXNET_MODEL", raising=False)
    monkeypatch.setattr("core.paths.BUNDLED_MODEL_DIR", tmp_path / "no-bundled-model")
    yield url
    dispose_engine(url)


def user_of(url: str, username: str) -> User:
    with session_scope(url) as session:
        return accounts.get_user(session, username)


def page(url: str, username: str | None, path: str = REVIEW_PAGE) -> AppTest:
    at = AppTest.from_file(path, default_timeout=120)
    if username is not None:
        user = user_of(url, username)
        at.session_state["user"] = SessionUser(user.id, user.username, user.role)
    return at


def remaining(at: AppTest) -> int:
    return int(next(m for m in at.metric if m.label == "Left in this queue").value.replace(",", ""))


def current(at: AppTest):
    return at.session_state["review_target"]


def token(at: AppTest) -> int:
    return at.session_state["review_form_token"]


def finding_button(at: AppTest, finding: str):
    return at.button(key=f"review_f_{finding}")


def uncertain_button(at: AppTest, finding: str):
    return at.button(key=f"review_u_{finding}")


def answer(at: AppTest) -> dict:
    return at.session_state[f"review_{token(at)}_answer"]


def present(at: AppTest) -> list[str]:
    return [f for f, state in answer(at)["states"].items() if state == "present"]


def comment_box(at: AppTest):
    return at.text_input(key=f"review_{token(at)}_comment")


def tick(at: AppTest, *findings: str, comment: str | None = None) -> None:
    """Set the answer to exactly these findings Present (the rest Absent), clicking their buttons."""
    for finding in FINDINGS:
        if (finding in findings) != (answer(at)["states"][finding] == "present"):
            finding_button(at, finding).click().run()
    if comment is not None:
        comment_box(at).set_value(comment).run()


def save(at: AppTest) -> AppTest:
    return at.button(key="review_save").click().run()


def open_by_name(at: AppTest, name: str) -> AppTest:
    at.text_input(key="review_open_name").set_value(name)
    return at.button(key="review_open").click().run()


def set_study(url: str, **settings) -> None:
    """Change the study settings as the admin "root" would on the Assignments & study page."""
    from db import study

    with session_scope(url) as session:
        study.update_study_settings(session, accounts.get_user(session, "root"), **settings)


def markdown_texts(at: AppTest) -> list[str]:
    """Every text on the page that Streamlit renders as markdown."""
    kinds = (at.title, at.header, at.subheader, at.markdown, at.caption, at.success, at.info, at.warning)
    return [element.value for kind in (*kinds, at.error) for element in kind] + [e.label for e in at.expander]
