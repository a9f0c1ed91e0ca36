"""AppTest of the Review page on a real database with the real NIH sample imported: blinded reading,
Present / Absent / Uncertain answers with reason codes, assignments, the viewer, finding images."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image as PILImage
from sqlalchemy import select

from core.labels import FINDINGS
from db import accounts, assignments
from db.effective import effective_labels
from db.engine import dispose_engine, get_engine, session_scope
from db.importer import store_upload
from db.models import Box, Image, LabelEvent, Review, User, findings_in
from db.registry import promote, register_model_version, save_predictions
from db.reviews import save_review
from db.study_mode_agreement import nlp_agreement_by_mode
from tests.review_helpers import (
    REVIEW_PAGE,
    answer,
    comment_box,
    current,
    db_url,
    finding_button,
    markdown_texts,
    model_dir,
    open_by_name,
    page,
    present,
    remaining,
    save,
    set_study,
    template_db,
    tick,
    uncertain_button,
    user_of,
)
from webapp.formatting import plain
from webapp.viewer import apply_window, preset_window, scale_box, window_bounds

FIXTURES = (template_db, db_url, model_dir)  # review_helpers' fixtures, used here by name


def test_empty_database_says_how_to_import(tmp_path, monkeypatch, fast_password_hashing):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    with session_scope(get_engine(url)) as session:
        accounts.create_user(session, "alice", "correct horse battery")
    at = page(url, "alice")
    at.run()
    assert not at.exception
    assert any("python -m db import" in info.value for info in at.info)
    assert len(at.get("plotly_chart")) == 0 and len(at.button) == 0
    dispose_engine(url)


def test_save_and_next_records_a_blinded_read_and_advances(db_url):
    at = page(db_url, "alice")
    at.run()
    assert not at.exception and not at.error
    # No model version is active: the default queue says so and falls back to unreviewed images.
    assert any("No model version is active" in info.value for info in at.info)
    first = current(at)
    assert first.name == "00000001_000.png" and first.blinded  # unreviewed first, by id; blind by default
    assert present(at) == ["Cardiomegaly"]  # AI-first: prefilled from the NLP label
    assert any("Blinded read" in c.value for c in at.caption)
    assert any("E Effusion" in c.value and "Shift + key: Uncertain" in c.value for c in at.caption)
    assert len(at.get("plotly_chart")) == 1
    left = remaining(at)
    assert left == 555

    tick(at, "Cardiomegaly", "Effusion", comment="small left effusion")
    save(at)
    assert not at.exception and not at.error
    assert current(at).image_id != first.image_id
    assert remaining(at) == left - 1
    message = at.success[0].value
    assert (
        message == f"Saved your review of {plain(first.name)} (version 1)."
    )  # blind: no consensus, no count

    alice = user_of(db_url, "alice")
    with session_scope(db_url) as session:
        review = session.scalars(select(Review).where(Review.image_id == first.image_id)).one()
        assert (review.user_id, review.cardiomegaly, review.effusion) == (alice.id, True, True)
        assert not review.atelectasis and review.comment == "small left effusion" and review.version == 1
        assert review.blinded and review.study_mode == "ai_first" and 0 < review.read_seconds < 600
        events = session.scalars(select(LabelEvent).where(LabelEvent.image_id == first.image_id)).all()
        assert len(events) == 1
        assert events[0].kind == "review" and events[0].user_id == alice.id and events[0].before is None
        assert events[0].after["findings"]["Effusion"] is True
    # The next image's answer is its own, not the previous input.
    assert comment_box(at).value == "" and "Effusion" not in present(at)


def test_a_finding_clears_no_finding_and_no_finding_clears_the_findings(db_url):
    at = page(db_url, "alice")
    at.run()
    at.button(key="review_no_finding").click().run()
    assert answer(at)["no_finding"] and present(at) == []
    finding_button(at, "Mass").click().run()
    assert not at.error and present(at) == ["Mass"] and not answer(at)["no_finding"]
    uncertain_button(at, "Nodule").click().run()
    assert answer(at)["states"]["Nodule"] == "uncertain"
    at.button(key="review_no_finding").click().run()
    assert not at.error and answer(at)["no_finding"]
    assert set(answer(at)["states"].values()) == {"absent"}
    save(at)
    assert not at.error
    with session_scope(db_url) as session:
        review = session.scalars(select(Review)).one()
        assert review.no_finding and not review.mass and review.uncertain_mask == 0


def test_uncertain_findings_with_reason_codes(db_url):
    at = page(db_url, "alice")
    at.run()
    image_id = current(at).image_id
    uncertain_button(at, "Nodule").click().run()
    pills = at.get("button_group")
    reasons = next(p for p in pills if "Nodule" in p.label)
    reasons.set_value(["poor_quality", "borderline"]).run()
    finding_button(at, "Nodule").click().run()  # Present now; again Uncertain
    assert answer(at)["states"]["Nodule"] == "present"
    uncertain_button(at, "Nodule").click().run()
    save(at)
    assert not at.exception and not at.error
    with session_scope(db_url) as session:
        review = session.scalars(select(Review).where(Review.image_id == image_id)).one()
        assert findings_in(review.uncertain_mask) == ("Nodule",) and not review.nodule
        assert review.reasons == {"Nodule": ["borderline", "poor_quality"]}


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
    assert present(at) == ["Effusion", "Edema"] and comment_box(at).value == "my reading"
    at.slider(key="review_level").set_value(90).run()  # any later rerun keeps the input too
    assert present(at) == ["Effusion", "Edema"] and "Someone changed" in at.error[0].value
    with session_scope(db_url) as session:
        stored = session.scalars(select(Review)).one()
        assert (stored.version, stored.atelectasis, stored.effusion) == (1, True, False)
        assert len(session.scalars(select(LabelEvent)).all()) == 1

    # "Load the saved version" shows the other tab's review; saving on top of it then works.
    at.button(key="review_reload").click().run()
    assert not at.error
    assert present(at) == ["Atelectasis"] and comment_box(at).value == "other tab"
    assert any("You reviewed this image before (version 1)" in c.value for c in at.caption)
    tick(at, "Atelectasis", "Effusion")
    save(at)
    assert "(version 2)" in at.success[0].value
    with session_scope(db_url) as session:
        assert session.scalars(select(Review)).one().version == 2


def test_a_second_reader_is_blind_unless_an_admin_turns_blinding_off(db_url):
    alice = page(db_url, "alice")
    alice.run()
    image = current(alice)
    tick(alice, "Effusion", "Mass")
    save(alice)

    bob = page(db_url, "bob")
    bob.run()
    open_by_name(bob, image.name.removesuffix(".png"))  # the .png may be left out
    assert current(bob).image_id == image.image_id
    texts = " ".join(markdown_texts(bob))
    assert (
        "1 review" not in texts
        and "consensus" not in texts
        and "Mass" not in " ".join(m.value for m in bob.markdown)
    )
    assert present(bob) == ["Cardiomegaly"]  # the NLP label, not alice's answer
    assert "Current" not in bob.dataframe[0].value.columns  # no effective-label column either

    set_study(db_url, blinding=False)
    bob = page(db_url, "bob")
    bob.run()
    open_by_name(bob, image.name)
    assert any("1 review, consensus: Effusion, Mass" in m.value for m in bob.markdown)
    assert present(bob) == ["Effusion", "Mass"]  # unblinded: prefilled from the consensus
    tick(bob, "Effusion")
    save(bob)
    # Mass: 1 of 2 readers is a tie, a dispute, never silently decided.
    assert "2 reviews, disputed on Mass: awaiting adjudication." in bob.success[0].value
    with session_scope(db_url) as session:
        reads = session.scalars(
            select(Review).where(Review.image_id == image.image_id).order_by(Review.id)
        ).all()
        assert [r.blinded for r in reads] == [True, False]


def test_ai_hidden_shows_neither_the_nlp_label_nor_the_model(db_url, model_dir, monkeypatch):
    monkeypatch.setenv("CHEXNET_MODEL", str(model_dir))
    set_study(db_url, study_mode="ai_hidden")
    at = page(db_url, "alice")
    at.run()
    assert not at.exception
    assert present(at) == [] and not answer(at)["no_finding"]  # an empty answer
    assert len(at.dataframe) == 0  # no model, NLP or label table
    assert at.button(key="review_cam").disabled  # the CAM overlay has no model output to show
    image_id = current(at).image_id
    tick(at, "Hernia")
    save(at)
    with session_scope(db_url) as session:
        review = session.scalars(select(Review).where(Review.image_id == image_id)).one()
        assert review.study_mode == "ai_hidden" and review.hernia


def test_my_assignments_queue_with_progress(db_url):
    with session_scope(db_url) as session:
        root, alice, bob = (accounts.get_user(session, name) for name in ("root", "alice", "bob"))
        assignments.create_assignments(session, root, [alice.id, bob.id], 3, 100, seed=1)
    at = page(db_url, "alice")
    at.run()
    assert at.selectbox(key="review_strategy").value == "My assignments"  # readers with work start there
    assert at.get("progress")[0].proto.text == "0 of 3 assigned read" and remaining(at) == 3
    first = current(at).image_id
    tick(at, "Mass")
    save(at)
    assert at.get("progress")[0].proto.text == "1 of 3 assigned read" and remaining(at) == 2
    with session_scope(db_url) as session:
        bob_images = [i.image_id for i in assignments.my_assignments(session, user_of(db_url, "bob").id)]
    assert first in bob_images  # the same image, read a second time by another reader
    for _ in range(2):
        tick(at, "Mass")
        save(at)
    assert any("read every image assigned to you" in s.value for s in at.success)


def test_undo_last_save_reopens_the_saved_answer(db_url):
    at = page(db_url, "alice")
    at.run()
    at.button(key="review_undo").click().run()
    assert "nothing to undo" in at.error[0].value
    first = current(at).image_id
    tick(at, "Edema")
    save(at)
    assert current(at).image_id != first
    at.button(key="review_undo").click().run()
    assert current(at).image_id == first and present(at) == ["Edema"]
    assert any("Reopened your last save" in c.value for c in at.caption)


def test_open_an_image_by_its_number_or_file_name(db_url, sample_dir):
    with session_scope(db_url) as session:
        picture = PILImage.open(sorted((sample_dir / "images").glob("*.png"))[0])
        encoded = io.BytesIO()
        picture.save(encoded, format="PNG", compress_level=1)  # other bytes than the dataset's copy
        upload = store_upload(
            session, encoded.getvalue(), "ward 3 chest.png", accounts.get_user(session, "alice")
        )
        upload_id = upload.id
    at = page(db_url, "alice")
    at.run()
    for typed in (str(upload_id), f"#{upload_id}", "ward 3 chest.png"):
        open_by_name(at, typed)
        assert not at.error and current(at).image_id == upload_id, typed
    open_by_name(at, "99999999_999.png")
    assert any(f"There is no image “{plain('99999999_999.png')}”" in e.value for e in at.error)


def test_missing_file_is_said_and_offers_only_skip(db_url):
    with session_scope(db_url) as session:
        session.get(Image, 1).path = "/nowhere/00000001_000.png"
    at = page(db_url, "alice")
    at.run()
    assert not at.exception
    assert any(f"is missing at {plain('/nowhere/00000001_000.png')}" in e.value for e in at.error)
    assert len(at.get("plotly_chart")) == 0 and not any(b.key == "review_save" for b in at.button)
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
    assert not any("model disagrees most on" in c.value for c in at.caption)  # blind: the score hides labels
    assert remaining(at) == len(probabilities)
    set_study(db_url, blinding=False)
    at = page(db_url, "alice")
    at.run()
    assert any("model disagrees most on" in c.value for c in at.caption)


def figure_of(at):
    return json.loads(at.get("plotly_chart")[0].proto.spec)


def test_viewer_boxes_cam_scale_window_presets_and_zoom_kept(db_url, model_dir, monkeypatch):
    monkeypatch.setenv("CHEXNET_MODEL", str(model_dir))
    with session_scope(db_url) as session:
        with_box = select(Image).join(Box, Box.image_id == Image.id).order_by(Image.id)
        box_image = session.scalars(with_box).first()
        boxes = session.scalars(select(Box).where(Box.image_id == box_image.id)).all()
    at = page(db_url, "alice")
    at.run()
    open_by_name(at, box_image.image_index)
    assert not at.exception
    figure = figure_of(at)
    shapes = figure["layout"]["shapes"]
    assert len(shapes) == len(boxes)
    # Boxes are in 1024-px NIH space; the sample's copies are 512 px, so they are drawn at half size.
    assert shapes[0]["x0"] == pytest.approx(boxes[0].x / 2)
    assert shapes[0]["y1"] == pytest.approx((boxes[0].y + boxes[0].h) / 2)
    assert figure["layout"]["uirevision"] == box_image.id  # zoom kept until another image opens

    table = at.dataframe[0].value
    assert list(table["Finding"]) == [f.replace("_", " ") for f in FINDINGS]
    assert table["Model"].between(0, 1).all() and "NLP" in table.columns
    plain_source = figure["data"][0]["source"]

    at.button(key="review_cam").click().run()  # the toolbar's CAM button (key K)
    assert not at.exception
    assert any("CAM of" in c.value for c in at.caption)
    with_cam = figure_of(at)
    assert with_cam["data"][0]["source"] != plain_source
    assert with_cam["data"][1]["marker"]["showscale"]  # the CAM's colour scale
    assert with_cam["layout"]["uirevision"] == box_image.id

    level, width = at.slider(key="review_level").value, at.slider(key="review_width").value
    at.button(key="review_preset_Lung").click().run()  # the Lung preset (key 2)
    assert (at.slider(key="review_level").value, at.slider(key="review_width").value) != (level, width)
    at.button(key="review_invert").click().run()
    assert at.button(key="review_invert").proto.type == "primary"  # shown as on
    assert figure_of(at)["layout"]["uirevision"] == box_image.id
    at.button(key="review_boxes").click().run()
    assert "shapes" not in figure_of(at)["layout"]


def test_cam_feedback_is_stored_per_model(db_url, model_dir, monkeypatch):
    from db.models import CamFeedback

    monkeypatch.setenv("CHEXNET_MODEL", str(model_dir))
    at = page(db_url, "alice")
    at.run()
    image_id = current(at).image_id  # NLP: Cardiomegaly
    at.button(key="review_cam").click().run()
    at.selectbox(key="review_cam_finding").set_value("Cardiomegaly").run()
    assert any("Does the heat map point at Cardiomegaly?" in c.value for c in at.caption)
    at.button(key="review_cam_feedback_False").click().run()
    assert not at.exception
    with session_scope(db_url) as session:
        row = session.scalars(select(CamFeedback)).one()
        assert (row.image_id, row.finding, row.points_at_finding) == (image_id, "Cardiomegaly", False)
        assert row.model_name == "review-apptest-model"
    assert at.button(key="review_cam_feedback_False").proto.type == "primary"  # the verdict given shows


def test_window_and_box_scaling_helpers():
    pixels = np.array([[0, 50, 100, 150, 255]], dtype=np.uint8)
    assert apply_window(pixels, 50, 150).tolist() == [[0, 0, 128, 255, 255]]
    assert apply_window(pixels, 0, 255, invert=True).tolist() == [[255, 205, 155, 105, 0]]
    assert scale_box(100, 200, 50, 25, 512, 512) == (50, 100, 75, 112.5)
    assert window_bounds(100, 50) == (75, 125) and preset_window(pixels, "Full") == (128, 256)
    ramp = np.arange(256, dtype=np.uint8).reshape(16, 16)
    lung, bone = preset_window(ramp, "Lung"), preset_window(ramp, "Bone")
    assert lung[0] < bone[0]  # the lung window sits on the dark grey levels, bone on the bright


EVIL_FILE_NAMES = ("[Session expired - click](https:evil.example).png", "![t](https:tracker.example).png")
UNESCAPED_LINK = re.compile(r"(?<!\\)\[[^\]]*(?<!\\)\]\(")  # "[text](" or "![alt](", brackets not escaped


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


def test_page_stops_for_anonymous_visitors(db_url):
    at = page(db_url, None, REVIEW_PAGE)
    at.run()
    assert not at.exception
    assert any("Please log in" in w.value for w in at.warning)
    assert len(at.button) == 0 and len(at.get("plotly_chart")) == 0 and len(at.metric) == 0


def test_the_reader_chooses_per_session_whether_the_ai_shows_and_each_review_records_it(
    db_url, model_dir, monkeypatch
):
    monkeypatch.setenv("CHEXNET_MODEL", str(model_dir))
    at = page(db_url, "alice")
    at.run()
    first = current(at)
    assert at.toggle(key="review_show_ai").value and first.ai_shown
    assert present(at) == ["Cardiomegaly"] and len(at.dataframe) == 1  # AI-first: NLP pre-ticked, scores
    at.toggle(key="review_show_ai").set_value(False).run()
    # This image's AI answer has been seen: it stays AI-first; the choice applies from the next image.
    assert current(at).image_id == first.image_id and current(at).ai_shown and len(at.dataframe) == 1
    save(at)
    second = current(at)
    assert not second.ai_shown and present(at) == [] and len(at.dataframe) == 0
    assert at.button(key="review_cam").disabled
    assert any("Blinded read" in c.value and "AI hidden" in c.value for c in at.caption)
    tick(at, "Hernia")
    save(at)
    third = current(at)
    assert not third.ai_shown and present(at) == []
    tick(at, "Mass")
    at.toggle(key="review_show_ai").set_value(True).run()  # shown at once, the answer so far kept
    assert current(at).image_id == third.image_id and current(at).ai_shown
    assert present(at) == ["Mass"] and len(at.dataframe) == 1 and not at.button(key="review_cam").disabled
    save(at)
    with session_scope(db_url) as session:
        modes = {r.image_id: r.study_mode for r in session.scalars(select(Review))}
    assert modes == {first.image_id: "ai_first", second.image_id: "ai_hidden", third.image_id: "ai_first"}
    # The agreement with the NLP label, split by how each read was made. Image 1: NLP Cardiomegaly,
    # answered Cardiomegaly; image 2: NLP No Finding, answered Hernia; image 3: NLP Mass and Nodule,
    # answered Mass.
    with session_scope(db_url) as session:
        split = {entry.study_mode: entry for entry in nlp_agreement_by_mode(session)}
    assert set(split) == {"ai_first", "ai_hidden"}
    assert (split["ai_first"].reads, split["ai_hidden"].reads) == (2, 1)
    assert split["ai_first"].agreement == pytest.approx(27 / 28)
    assert split["ai_hidden"].agreement == pytest.approx(13 / 14)
    assert split["ai_hidden"].by_finding["Hernia"].agreement == 0.0
    assert split["ai_first"].by_finding["Nodule"].agreement == 0.5
    assert split["ai_first"].by_finding["Cardiomegaly"].agreement == 1.0

    set_study(db_url, study_mode="ai_hidden")  # an AI-hidden study: no reader may show it
    at = page(db_url, "bob")
    at.run()
    assert at.toggle(key="review_show_ai").disabled and not current(at).ai_shown and len(at.dataframe) == 0


def _add_follow_ups(url: str, sample_dir) -> None:
    """Patient 1's follow-ups 001 and 002 with their real NIH labels; the sample has one image per patient,
    so their files are other sample images (the pairing is tested, not the pixels)."""
    from db.models import FINDING_COLUMNS, NlpLabel

    series = {
        "00000001_001.png": ("00000002_000.png", ("cardiomegaly", "emphysema")),
        "00000001_002.png": ("00000004_000.png", ("cardiomegaly", "effusion")),
    }
    with session_scope(url) as session:
        for name, (source, positives) in series.items():
            image = Image(
                image_index=name, path=str(sample_dir / "images" / source), patient_id=1, view="PA",
                split="train_val", source="dataset",
            )  # fmt: skip
            session.add(image)
            session.flush()
            labels = {column: column in positives for column in FINDING_COLUMNS}
            session.add(NlpLabel(image_id=image.id, source="nlp", **labels))


def test_prior_study_beside_the_image_with_its_place_and_label(db_url, sample_dir):
    from db.prior_study import follow_up_number, prior_study

    _add_follow_ups(db_url, sample_dir)
    at = page(db_url, "alice")
    at.run()
    open_by_name(at, "00000001_002.png")
    assert at.button(key="review_prior").proto.type == "secondary" and len(at.get("plotly_chart")) == 1
    at.button(key="review_prior").click().run()  # the prior view (key W)
    assert not at.exception and len(at.get("plotly_chart")) == 2
    caption = next(c.value for c in at.caption if "Prior:" in c.value)
    assert plain("00000001_001.png") in caption and "follow-up 1 (earlier) of 3 image(s)" in caption
    assert plain("NLP label: Cardiomegaly, Emphysema") in caption
    assert any("This image:" in c.value and "follow-up 2" in c.value for c in at.caption)
    prior_figure, current_figure = (json.loads(chart.proto.spec) for chart in at.get("plotly_chart"))
    assert prior_figure["data"][0]["source"] != current_figure["data"][0]["source"]
    at.button(key="review_preset_Bone").click().run()  # one window for both: the prior's picture changes
    windowed = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert windowed["data"][0]["source"] != prior_figure["data"][0]["source"]
    # The answer is the current image's.
    tick(at, "Mass")
    save(at)
    with session_scope(db_url) as session:
        saved = session.scalars(select(Review)).one()
        assert session.get(Image, saved.image_id).image_index == "00000001_002.png" and saved.mass

    # Blinded, the prior shows the reader's own review of it, never other readers' consensus.
    open_by_name(at, "00000001_001.png")
    assert any("Prior:" in c.value and plain("00000001_000.png") in c.value for c in at.caption)
    tick(at, "Nodule")
    save(at)
    bob = page(db_url, "bob")
    bob.run()
    open_by_name(bob, "00000001_002.png")
    bob.button(key="review_prior").click().run()
    caption = next(c.value for c in bob.caption if "Prior:" in c.value)
    assert "Nodule" not in caption and plain("NLP label: Cardiomegaly, Emphysema") in caption
    set_study(db_url, blinding=False)
    bob = page(db_url, "bob")
    bob.run()
    open_by_name(bob, "00000001_002.png")
    bob.button(key="review_prior").click().run()
    assert any(plain("1 review, consensus: Nodule") in c.value for c in bob.caption)
    open_by_name(bob, "00000001_000.png")  # the first of the series: nothing earlier
    assert any("No earlier image of this patient" in c.value for c in bob.caption)
    assert len(bob.get("plotly_chart")) == 1

    with session_scope(db_url) as session:
        assert follow_up_number("00000001_002.png") == 2 and follow_up_number("upload.png") is None
        first = session.scalars(select(Image).where(Image.image_index == "00000001_000.png")).one()
        assert prior_study(session, first.id) is None
