"""AppTest of the Review and Label quality pages on a real database with the real NIH sample imported."""

from __future__ import annotations

import json
import re
import sqlite3

import numpy as np
import pandas as pd
import pytest
import torch
from argon2 import PasswordHasher
from sqlalchemy import select
from streamlit.testing.v1 import AppTest

from core.artifact import new_card, save_artifact
from core.labels import FINDINGS
from core.models import create_model
from core.paths import REPO_ROOT
from db import accounts
from db.engine import dispose_engine, get_engine, session_scope
from db.importer import import_chestxray14, store_upload
from db.models import Box, Image, LabelEvent, Review, User
from db.registry import promote, register_model_version, save_predictions
from db.reviews import effective_labels, save_review
from webapp.auth import SessionUser
from webapp.formatting import plain
from webapp.viewer import apply_window, scale_box

REVIEW_PAGE = str(REPO_ROOT / "webapp" / "views" / "review.py")
QUALITY_PAGE = str(REPO_ROOT / "webapp" / "views" / "quality.py")
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


def review_form(at: AppTest):
    (form,) = [form for form in at.get("form") if any(b.label == "Save & next" for b in form.button)]
    return form


def checkbox(at: AppTest, label: str):
    """A checkbox of the review form, found by its label as a reviewer finds it."""
    (found,) = [box for box in review_form(at).checkbox if box.label == label]
    return found


def comment_box(at: AppTest):
    (found,) = [box for box in review_form(at).text_input if box.label == "Comment"]
    return found


def form_values(at: AppTest) -> dict:
    return {
        "findings": {f: checkbox(at, f.replace("_", " ")).value for f in FINDINGS},
        "no_finding": checkbox(at, "No Finding").value,
        "exclude": checkbox(at, "Not diagnostic quality — exclude").value,
        "comment": comment_box(at).value,
    }


def tick(at: AppTest, *findings: str, no_finding: bool = False, comment: str | None = None) -> None:
    """Set the form to exactly these findings (the rest unticked)."""
    for finding in FINDINGS:
        checkbox(at, finding.replace("_", " ")).set_value(finding in findings)
    checkbox(at, "No Finding").set_value(no_finding)
    if comment is not None:
        comment_box(at).set_value(comment)


def save(at: AppTest) -> AppTest:
    return at.button(key="review_save").click().run()


def open_by_name(at: AppTest, name: str) -> AppTest:
    at.text_input(key="review_open_name").set_value(name)
    return at.button(key="review_open").click().run()


def test_empty_database_says_how_to_import(tmp_path, monkeypatch, fast_password_hashing):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    with session_scope(get_engine(url)) as session:
        accounts.create_user(session, "alice", "correct horse battery")
    at = page(url, "alice")
    at.run()
    assert not at.exception
    assert any("python -m db import" in info.value for info in at.info)
    assert len(at.get("plotly_chart")) == 0 and len(at.checkbox) == 0
    dispose_engine(url)


def test_save_and_next_writes_a_review_and_an_audit_event_and_advances(db_url):
    at = page(db_url, "alice")
    at.run()
    assert not at.exception and not at.error
    # No model version is active: the default queue says so and falls back to unreviewed images.
    assert any("No model version is active" in info.value for info in at.info)
    first = current(at)
    assert first.name == "00000001_000.png"  # unreviewed first, by id
    assert form_values(at)["findings"]["Cardiomegaly"]  # prefilled from the NLP label
    assert len(at.get("plotly_chart")) == 1
    left = remaining(at)
    assert left == 555

    tick(at, "Cardiomegaly", "Effusion", comment="small left effusion")
    save(at)
    assert not at.exception and not at.error
    assert current(at).image_id != first.image_id
    assert remaining(at) == left - 1
    message = at.success[0].value
    assert f"Saved your review of {plain(first.name)} (version 1)" in message  # markdown-escaped name
    assert "1 review, consensus: Cardiomegaly, Effusion" in message

    alice = user_of(db_url, "alice")
    with session_scope(db_url) as session:
        review = session.scalars(select(Review).where(Review.image_id == first.image_id)).one()
        assert (review.user_id, review.cardiomegaly, review.effusion) == (alice.id, True, True)
        assert not review.atelectasis
        assert review.comment == "small left effusion" and review.version == 1
        events = session.scalars(select(LabelEvent).where(LabelEvent.image_id == first.image_id)).all()
        assert len(events) == 1
        assert events[0].kind == "review" and events[0].user_id == alice.id and events[0].before is None
        assert events[0].after["findings"]["Effusion"] is True
        # The next image's form starts from its own label, not from the previous input.
        assert form_values(at)["comment"] == ""


def test_no_finding_with_a_finding_is_refused_and_the_input_kept(db_url):
    at = page(db_url, "alice")
    at.run()
    first = current(at)
    tick(at, "Mass", no_finding=True, comment="both?")
    save(at)
    assert not at.exception
    assert len(at.error) == 1 and "cannot be saved together with findings (Mass)" in at.error[0].value
    assert current(at).image_id == first.image_id
    values = form_values(at)
    assert values["findings"]["Mass"] and values["no_finding"] and values["comment"] == "both?"
    with session_scope(db_url) as session:
        assert session.scalar(select(Review.id)) is None


def test_stale_save_is_refused_and_the_input_kept(db_url):
    at = page(db_url, "alice")
    at.run()
    target = current(at)
    # The same account saves this image in another tab after this one opened it.
    with session_scope(db_url) as session:
        other_tab = session.get(User, user_of(db_url, "alice").id)
        findings = {"Atelectasis": True}
        save_review(session, target.image_id, other_tab, findings, False, False, "other tab", None)

    tick(at, "Effusion", "Edema", comment="my reading")
    save(at)
    assert not at.exception
    assert len(at.error) == 1 and "Someone changed this review" in at.error[0].value
    assert current(at).image_id == target.image_id
    kept = form_values(at)
    assert kept["findings"]["Effusion"] and kept["findings"]["Edema"] and not kept["findings"]["Atelectasis"]
    assert kept["comment"] == "my reading"
    at.slider(key="review_window").set_value((20, 230)).run()  # any later rerun keeps the input too
    assert form_values(at) == kept and "Someone changed" in at.error[0].value
    with session_scope(db_url) as session:
        stored = session.scalars(select(Review)).one()
        assert (stored.version, stored.atelectasis, stored.effusion) == (1, True, False)
        assert stored.comment == "other tab"
        assert len(session.scalars(select(LabelEvent)).all()) == 1

    # "Load the saved version" shows the other tab's review; saving on top of it then works.
    at.button(key="review_reload").click().run()
    assert not at.error
    reloaded = form_values(at)
    assert reloaded["findings"]["Atelectasis"] and not reloaded["findings"]["Effusion"]
    assert reloaded["comment"] == "other tab"
    assert any("You reviewed this image before (version 1)" in c.value for c in at.caption)
    tick(at, "Atelectasis", "Effusion")
    save(at)
    assert "(version 2)" in at.success[0].value
    with session_scope(db_url) as session:
        assert session.scalars(select(Review)).one().version == 2
        assert len(session.scalars(select(LabelEvent)).all()) == 2


def test_two_reviewers_make_a_consensus(db_url):
    alice = page(db_url, "alice")
    alice.run()
    image = current(alice)
    tick(alice, "Effusion", "Mass")
    save(alice)

    bob = page(db_url, "bob")
    bob.run()
    open_by_name(bob, image.name.removesuffix(".png"))  # the .png may be left out
    assert current(bob).image_id == image.image_id
    assert any("1 review, consensus: Effusion, Mass" in m.value for m in bob.markdown)
    assert form_values(bob)["findings"]["Effusion"]  # prefilled from the current (consensus) label
    tick(bob, "Effusion")
    save(bob)
    assert not bob.error
    # Mass: 1 of 2 readers is no majority, so the consensus keeps only Effusion.
    assert "2 reviews, consensus: Effusion." in bob.success[0].value
    with session_scope(db_url) as session:
        assert len(session.scalars(select(Review).where(Review.image_id == image.image_id)).all()) == 2


def test_open_unknown_image_says_so(db_url):
    at = page(db_url, "alice")
    at.run()
    open_by_name(at, "99999999_999.png")
    assert any(f"There is no image named “{plain('99999999_999.png')}”" in e.value for e in at.error)


def test_missing_file_is_said_and_offers_only_skip(db_url):
    with session_scope(db_url) as session:
        session.get(Image, 1).path = "/nowhere/00000001_000.png"
    at = page(db_url, "alice")
    at.run()
    assert not at.exception
    assert any(f"is missing at {plain('/nowhere/00000001_000.png')}" in e.value for e in at.error)
    assert len(at.get("form")) == 1 and len(at.get("plotly_chart")) == 0  # only the "Open an image" form
    at.button(key="review_skip_unreadable").click().run()
    assert current(at).image_id != 1 and len(at.get("plotly_chart")) == 1


def test_skip_moves_on_without_saving(db_url):
    at = page(db_url, "alice")
    at.run()
    first, left = current(at), remaining(at)
    at.button(key="review_skip").click().run()
    assert current(at).image_id != first.image_id
    assert remaining(at) == left  # skipping is not reviewing
    with session_scope(db_url) as session:
        assert session.scalar(select(Review.id)) is None


def test_finding_and_split_queues(db_url):
    at = page(db_url, "alice")
    at.run()
    at.selectbox(key="review_strategy").set_value("By finding").run()
    at.selectbox(key="review_finding").set_value("Hernia").run()
    assert not at.exception
    assert current(at).effective.findings["Hernia"]
    assert remaining(at) == 18  # the sample's README: Hernia 18

    at.selectbox(key="review_strategy").set_value("By split").run()
    at.selectbox(key="review_split").set_value("test").run()
    assert current(at).split == "test" and remaining(at) == 4


def test_disagreement_queue_uses_the_active_versions_stored_predictions(db_url, sample_dir):
    reference = pd.read_csv(sample_dir / "reference_chexnet_predictions.csv")
    with session_scope(db_url) as session:
        ids = dict(session.execute(select(Image.image_index, Image.id)).all())
        version = register_model_version(session, "reference", "/nowhere")
        probabilities = {
            ids[row["Image Index"]]: [row[f"prob_{f}"] for f in FINDINGS] for _, row in reference.iterrows()
        }
        save_predictions(session, version.id, probabilities)
        promote(session, version.id)
        labels = effective_labels(session, list(probabilities))
    gaps = {
        image_id: max(abs(p - labels[image_id].findings[f]) for f, p in zip(FINDINGS, probs, strict=True))
        for image_id, probs in probabilities.items()
    }
    worst = max(gaps, key=lambda image_id: (gaps[image_id], -image_id))

    at = page(db_url, "alice")
    at.run()
    assert not at.exception and not at.info  # no fallback notice
    assert current(at).image_id == worst
    assert any("model disagrees most on" in c.value for c in at.caption)
    assert remaining(at) == len(probabilities)


def test_viewer_boxes_cam_and_probability_table(db_url, model_dir, monkeypatch):
    monkeypatch.setenv("CHEXNET_MODEL", str(model_dir))
    with session_scope(db_url) as session:
        with_box = select(Image).join(Box, Box.image_id == Image.id).order_by(Image.id)
        box_image = session.scalars(with_box).first()
        boxes = session.scalars(select(Box).where(Box.image_id == box_image.id)).all()
    at = page(db_url, "alice")
    at.run()
    open_by_name(at, box_image.image_index)
    assert not at.exception
    figure = json.loads(at.get("plotly_chart")[0].proto.spec)
    shapes = figure["layout"]["shapes"]
    assert len(shapes) == len(boxes)
    # Boxes are in 1024-px NIH space; the sample's copies are 512 px, so they are drawn at half size.
    assert shapes[0]["x0"] == pytest.approx(boxes[0].x / 2)
    assert shapes[0]["y1"] == pytest.approx((boxes[0].y + boxes[0].h) / 2)

    table = at.dataframe[0].value
    assert list(table["Finding"]) == [f.replace("_", " ") for f in FINDINGS]
    assert table["Model"].between(0, 1).all()
    plain = figure["data"][0]["source"]

    at.toggle(key="review_cam").set_value(True).run()
    assert not at.exception
    assert any("CAM of" in c.value for c in at.caption)
    assert json.loads(at.get("plotly_chart")[0].proto.spec)["data"][0]["source"] != plain
    at.toggle(key="review_boxes").set_value(False).run()
    assert "shapes" not in json.loads(at.get("plotly_chart")[0].proto.spec)["layout"]


def test_window_and_box_scaling_helpers():
    pixels = np.array([[0, 50, 100, 150, 255]], dtype=np.uint8)
    assert apply_window(pixels, 50, 150).tolist() == [[0, 0, 128, 255, 255]]
    assert apply_window(pixels, 0, 255, invert=True).tolist() == [[255, 205, 155, 105, 0]]
    assert scale_box(100, 200, 50, 25, 512, 512) == (50, 100, 75, 112.5)


EVIL_FILE_NAMES = ("[Session expired - click](https:evil.example).png", "![t](https:tracker.example).png")
UNESCAPED_LINK = re.compile(r"(?<!\\)\[[^\]]*(?<!\\)\]\(")  # "[text](" or "![alt](", brackets not escaped


def markdown_texts(at: AppTest) -> list[str]:
    """Every text on the page that Streamlit renders as markdown."""
    kinds = (at.title, at.header, at.subheader, at.markdown, at.caption, at.success, at.info, at.warning)
    return [element.value for kind in (*kinds, at.error) for element in kind] + [e.label for e in at.expander]


def test_upload_file_names_are_shown_as_plain_text(tmp_path, monkeypatch, fast_password_hashing, sample_dir):
    url = f"sqlite:///{tmp_path / 'uploads.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("CHEXNET_HOME", str(tmp_path))
    monkeypatch.delenv("CHEXNET_MODEL", raising=False)
    monkeypatch.setattr("core.paths.BUNDLED_MODEL_DIR", tmp_path / "no-bundled-model")
    pictures = sorted((sample_dir / "images").glob("*.png"))[:2]
    with session_scope(get_engine(url)) as session:
        uploader = accounts.create_user(session, "alice", "correct horse battery")
        for name, picture in zip(EVIL_FILE_NAMES, pictures, strict=True):
            store_upload(session, picture.read_bytes(), name, uploader)

    at = page(url, "alice")
    at.run()
    assert not at.exception and not at.error
    assert current(at).name == EVIL_FILE_NAMES[0]  # unreviewed first, by id: the first upload
    assert plain(EVIL_FILE_NAMES[0]) in [heading.value for heading in at.subheader]
    assert not [text for text in markdown_texts(at) if UNESCAPED_LINK.search(text)]

    tick(at, "Effusion")
    save(at)  # the save message names the image
    assert current(at).name == EVIL_FILE_NAMES[1]
    assert f"Saved your review of {plain(EVIL_FILE_NAMES[0])}" in at.success[0].value
    with session_scope(url) as session:  # the same account saves the second upload in another tab
        findings = {"Mass": True}
        save_review(
            session, current(at).image_id, session.get(User, uploader.id), findings, False, False, "", None
        )
    tick(at, "Effusion")
    save(at)  # refused as stale: the error sentence names the image too
    assert any(plain(EVIL_FILE_NAMES[1]) in error.value for error in at.error)
    texts = markdown_texts(at)
    assert plain(EVIL_FILE_NAMES[1]) in [heading.value for heading in at.subheader]
    assert not [text for text in texts if UNESCAPED_LINK.search(text)], texts
    dispose_engine(url)


def test_quality_page_statistics_and_admin_only_export(db_url):
    with session_scope(db_url) as session:
        first, second = session.scalars(select(Image.id).order_by(Image.id).limit(2)).all()
        for username, positives in (("alice", {"Effusion"}), ("bob", {"Effusion", "Mass"})):
            reader = accounts.get_user(session, username)
            for image_id in (first, second):
                findings = {f: f in positives for f in FINDINGS}
                save_review(session, image_id, reader, findings, False, False, "", None)

    clinician = page(db_url, "alice", QUALITY_PAGE)
    clinician.run()
    assert not clinician.exception and not clinician.error
    metrics = {m.label: m.value for m in clinician.metric}
    assert metrics["Reviewed images"] == "2" and metrics["Read by two or more"] == "2"
    assert len(clinician.get("plotly_chart")) == 3
    overturns = clinician.dataframe[0].value.set_index("Finding")
    assert overturns.loc["Effusion", "→ positive"] == 2  # neither image is NLP-positive for Effusion
    agreement = clinician.dataframe[1].value.set_index("Finding")
    assert agreement.loc["Mass", "All readers agree"] == "0.0%"
    assert agreement.loc["Effusion", "All readers agree"] == "100.0%"
    assert len(clinician.get("download_button")) == 0  # exports are for admins

    admin = page(db_url, "root", QUALITY_PAGE)
    admin.run()
    assert not admin.exception
    labels = [button.proto.label for button in admin.get("download_button")]
    assert labels == ["Data_Entry CSV (Finding Labels)", "Trainer labels table (0/1 per finding)"]


@pytest.mark.parametrize("path", [REVIEW_PAGE, QUALITY_PAGE])
def test_pages_stop_for_anonymous_visitors(db_url, path):
    at = page(db_url, None, path)
    at.run()
    assert not at.exception
    assert any("Please log in" in w.value for w in at.warning)
    assert len(at.checkbox) == 0 and len(at.get("plotly_chart")) == 0 and len(at.metric) == 0
