"""AppTest of the study's admin pages (Adjudicate, Image history, Assignments & study) and of the Label
quality page's reader statistics, on a real database with the real NIH sample imported."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core.labels import FINDINGS
from db import accounts
from db.engine import session_scope
from db.export import export_labels_dataframe
from db.models import Adjudication, Assignment, Image, LabelEvent
from db.reviews import save_review
from db.study import study_settings
from tests.review_helpers import (
    ADJUDICATE_PAGE,
    ASSIGNMENTS_PAGE,
    HISTORY_PAGE,
    QUALITY_PAGE,
    db_url,
    page,
    template_db,
    user_of,
)
from webapp.formatting import plain

FIXTURES = (template_db, db_url)  # review_helpers' fixtures, used here by name


def _label(*positive: str) -> dict[str, bool]:
    return {f: f in positive for f in FINDINGS}


def _dispute(url: str) -> int:
    """alice reads Cardiomegaly, bob No Finding on the first image: a 1-1 tie. Returns its id."""
    with session_scope(url) as session:
        image_id = session.scalar(select(Image.id).order_by(Image.id).limit(1))
        alice, bob = accounts.get_user(session, "alice"), accounts.get_user(session, "bob")
        save_review(
            session, image_id, alice, _label("Cardiomegaly"), False, False, "big heart", None, blinded=True
        )
        save_review(session, image_id, bob, _label(), True, False, "", None, blinded=True)
    return image_id


def test_adjudicate_a_dispute_with_a_reason_and_see_its_history(db_url):
    image_id = _dispute(db_url)
    at = page(db_url, "root", ADJUDICATE_PAGE)
    at.run()
    assert not at.exception and not at.error
    assert at.metric[0].value == "1"
    assert any("Readers differ on: Cardiomegaly" in w.value for w in at.warning)
    side = at.dataframe[0].value.set_index("Finding")
    assert side.loc["Cardiomegaly", "Disputed"] == "⚠ yes" and side.loc["Cardiomegaly", "NLP"] == "✓"
    assert side.loc["Cardiomegaly", "Reader 1: alice"] == "✓ present"
    assert side.loc["Cardiomegaly", "Reader 2: bob"] == "– absent"
    assert list(at.dataframe[1].value["Comment"]) == ["big heart", ""]

    decision = at.button_group(key=f"adjudicate_{image_id}_Cardiomegaly")
    assert decision.value is None  # undecided where the readers differ; agreed findings are proposed
    assert at.button_group(key=f"adjudicate_{image_id}_Mass").value == "Absent"
    submit = f"FormSubmitter:adjudicate_form_{image_id}_None-Record the decision"
    at.button(key=submit).click().run()
    assert "Decide Present, Absent or Uncertain for Cardiomegaly" in at.error[0].value
    at.button_group(key=f"adjudicate_{image_id}_Cardiomegaly").set_value("Present")
    at.button(key=submit).click().run()
    assert "Give the reason" in at.error[0].value
    at.button_group(key=f"adjudicate_{image_id}_Cardiomegaly").set_value("Present")
    at.text_input(key=f"adjudicate_reason_{image_id}").set_value("cardiothoracic ratio 0.6")
    at.button(key=submit).click().run()
    assert not at.exception
    assert any("Recorded the decision" in s.value for s in at.success)
    assert any("No image is disputed" in s.value for s in at.success)

    with session_scope(db_url, read_only=True) as session:
        decided = session.scalars(select(Adjudication).where(Adjudication.image_id == image_id)).one()
        assert decided.cardiomegaly and decided.comment == "cardiothoracic ratio 0.6"
        events = session.scalars(select(LabelEvent).where(LabelEvent.image_id == image_id)).all()
        assert [e.kind for e in events] == ["review", "review", "adjudication"]
        assert events[-1].comment == "cardiothoracic ratio 0.6"
        row = export_labels_dataframe(session, "trainer").iloc[0]
        assert row["Cardiomegaly"] == 1 and row["disputed"] == ""

    history = page(db_url, "root", HISTORY_PAGE)
    history.run()
    history.text_input(key="history_image").set_value(f"#{image_id}").run()
    table = history.table[0].value
    assert list(table["Who"]) == ["alice", "bob", "root"]
    assert list(table["What"]) == ["review", "review", "adjudication"]
    assert table["Before → after"].iloc[2] == plain("created: Cardiomegaly present")
    assert table["Reason"].iloc[2] == plain(
        "cardiothoracic ratio 0.6"
    )  # escaped: st.table cells are markdown


def test_assignments_page_sets_the_study_and_assigns_double_reads(db_url):
    at = page(db_url, "root", ASSIGNMENTS_PAGE)
    at.run()
    assert not at.exception and any("No images are assigned yet" in i.value for i in at.info)
    at.toggle[0].set_value(False)
    at.radio[0].set_value("ai_hidden")
    at.button(key="FormSubmitter:study_settings-Save the study settings").click().run()
    assert any("blinding off" in s.value for s in at.success)
    with session_scope(db_url, read_only=True) as session:
        assert study_settings(session).study_mode == "ai_hidden"

    readers = [user_of(db_url, name).id for name in ("alice", "bob")]
    at.multiselect(key="assign_readers").set_value(readers)
    at.number_input[0].set_value(10)
    at.slider[0].set_value(50)
    at.button(key="FormSubmitter:assign_images-Assign").click().run()
    assert not at.exception
    assert any("Assigned 10 images, 5 of them twice" in s.value for s in at.success)
    workload = at.dataframe[0].value.set_index("Reader")
    assert workload["Assigned"].sum() == 15 and workload.loc["alice", "Done"] == 0
    with session_scope(db_url, read_only=True) as session:
        reads = session.execute(select(Assignment.image_id, Assignment.user_id)).all()
    twice = [i for i in {i for i, _ in reads} if sum(1 for j, _ in reads if j == i) == 2]
    assert len(twice) == 5
    assert all(len({u for i, u in reads if i == image}) == 2 for image in twice)

    at.multiselect(key="assign_readers").set_value([])
    at.button(key="FormSubmitter:assign_images-Assign").click().run()
    assert "at least one active reader" in at.error[0].value


def test_quality_page_reader_statistics_say_too_few_and_export_is_admin_only(db_url):
    with session_scope(db_url) as session:
        first, second = session.scalars(select(Image.id).order_by(Image.id).limit(2)).all()
        for username, positives in (("alice", {"Effusion"}), ("bob", {"Effusion", "Mass"})):
            reader = accounts.get_user(session, username)
            for image_id in (first, second):
                answer = _label(*positives)
                save_review(
                    session, image_id, reader, answer, False, False, "", None, blinded=True, read_seconds=12.0
                )
    clinician = page(db_url, "alice", QUALITY_PAGE)
    clinician.run()
    assert not clinician.exception and not clinician.error
    metrics = {m.label: m.value for m in clinician.metric}
    assert metrics["Reviewed images"] == "2" and metrics["Read blind by two or more"] == "2"
    overturns = clinician.dataframe[0].value.set_index("Finding")
    assert overturns.loc["Effusion", "rate −→+"] == "too few (n = 2)"  # not "100.0%" from two images
    agreement = clinician.dataframe[1].value.set_index("Finding")
    assert agreement.loc["Effusion", "Fleiss' kappa (95% CI)"] == "too few positives (4)"
    assert agreement.loc["Mass", "All readers agree"] == "0.0%" and agreement.loc["Mass", "Images"] == 2
    per_reader = clinician.dataframe[2].value
    assert set(per_reader["Reader"]) == {"alice", "bob"} and (per_reader["Reads"] == 2).all()
    by_mode = clinician.dataframe[3].value  # saved without a study mode: one row, said so
    assert list(by_mode["Read with"]) == ["not recorded (older reviews)"] and list(by_mode["Reads"]) == [4]
    assert "Effusion kappa" in by_mode.columns
    times = clinician.dataframe[4].value.set_index("Reader")
    assert times.loc["alice", "Median s per image"] == "12.00"
    assert len(clinician.get("download_button")) == 0  # exports are for admins

    admin = page(db_url, "root", QUALITY_PAGE)
    admin.run()
    assert not admin.exception
    labels = [button.proto.label for button in admin.get("download_button")]
    assert labels == ["Data_Entry CSV (Finding Labels)", "Trainer labels table (0/1 per finding)"]


@pytest.mark.parametrize("path", [ADJUDICATE_PAGE, HISTORY_PAGE, ASSIGNMENTS_PAGE, QUALITY_PAGE])
def test_pages_refuse_anonymous_visitors_and_admin_pages_refuse_clinicians(db_url, path):
    anonymous = page(db_url, None, path)
    anonymous.run()
    assert not anonymous.exception and any("Please log in" in w.value for w in anonymous.warning)
    assert len(anonymous.dataframe) == 0 and len(anonymous.metric) == 0
    if path != QUALITY_PAGE:
        clinician = page(db_url, "alice", path)
        clinician.run()
        assert any("does not have access" in e.value for e in clinician.error)
        assert len(clinician.dataframe) == 0
