"""Issue 18: a reader's adjudicated label written back to a real PACS (Debian's Orthanc, tests/orthanc_
fixtures.py) as a Comprehensive SR in the source study, through the worker's pacs_label_write_back job:
what is sent (consensus and adjudicated labels, Present / Absent / Uncertain), what is left out
(excluded, disputed, unread), that readers are not named, and that a second run adds nothing."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import Engine, event, select

from core.imaging.deidentify import pseudonymous_uid
from core.imaging.dicom_sr import read_label_sr
from core.labels import FINDINGS
from db import accounts, pacs
from db.engine import session_scope
from db.jobs import enqueue_job, get_job
from db.models import Image, PacsInstance, User
from db.reviews import adjudicate, save_review
from jobs.dicomweb import SearchCriteria
from jobs.pacs_import import import_instances
from jobs.pacs_label_write_back import (
    JOB_PACS_LABEL_WRITE_BACK,
    PacsLabelWriteBackParams,
    enqueue_pacs_label_write_back,
    label_candidates,
    write_back_labels,
)
from jobs.params import JobParamsError
from jobs.worker import Worker
from tests.admin_helpers import fast_settings
from tests.db_fixtures import TEST_PASSWORD
from tests.orthanc_fixtures import OrthancServer, store_sample_studies
from tests.test_dicom_sr_validation import dciodvfy, unaccepted

READER_NAMES = ("labelreader-anna", "labelreader-bert")


@pytest.fixture(autouse=True)
def own_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("CHEXNET_HOME", str(home))  # uploads and the pseudonym key land here
    return home


def users(engine: Engine) -> tuple[User, User, User]:
    with session_scope(engine) as session:
        made = [accounts.create_user(session, name, TEST_PASSWORD) for name in READER_NAMES]
        made.append(accounts.create_user(session, "labeladmin", TEST_PASSWORD, role="admin"))
        session.flush()
        session.expunge_all()
    return made[0], made[1], made[2]


def only(*positive: str) -> dict[str, bool]:
    return {finding: finding in positive for finding in FINDINGS}


def review(engine: Engine, image_id: int, user: User, positive=(), *, uncertain=(), exclude=False,
           version: int | None = None) -> None:  # fmt: skip
    with session_scope(engine) as session:
        no_finding = not positive and not uncertain and not exclude
        save_review(session, image_id, session.merge(user), only(*positive), no_finding, exclude, "", version,
                    uncertain=uncertain)  # fmt: skip


def orthanc_id(orthanc: OrthancServer, uid: str) -> str:
    [found] = orthanc.rest("POST", "/tools/lookup", data=uid).json()
    return found["ID"]


def label_srs(orthanc: OrthancServer, study_uid: str) -> list[tuple[pydicom.Dataset, bytes]]:
    """The reader-label SRs Orthanc holds in a study, with their bytes."""
    [found] = orthanc.rest("POST", "/tools/lookup", data=study_uid).json()
    found_srs = []
    for instance in orthanc.rest("GET", f"{found['Path']}/instances").json():
        data = orthanc.rest("GET", f"/instances/{instance['ID']}/file").content
        ds = pydicom.dcmread(io.BytesIO(data))
        if ds.Modality == "SR" and str(ds.SeriesDescription).startswith("Reader label"):
            found_srs.append((ds, data))
    return found_srs


def test_reader_labels_are_written_back_once_as_sr_in_the_source_study(
    sqlite_engine: Engine,
    orthanc: OrthancServer,
    sample_dir: Path,
    fast_password_hashing: None,
    tmp_path: Path,
) -> None:
    engine = sqlite_engine
    planted = store_sample_studies(orthanc, sample_dir, 5)
    with session_scope(engine) as session:
        connection_id = pacs.create_connection(
            session, "Label PACS", orthanc.dicomweb_url, auth="basic", username=orthanc.user,
            secret=orthanc.password,
        ).id  # fmt: skip
    import_instances(engine, connection_id, SearchCriteria())
    key = pacs.pseudonym_key()
    with session_scope(engine, read_only=True) as session:
        by_sop = {row.sop_pseudonym: row.image_id for row in session.scalars(select(PacsInstance))}
        assert session.query(Image).count() == 5
    image = [by_sop[pseudonymous_uid(key, p.sop_uid)] for p in planted]
    anna, bert, admin = users(engine)
    review(engine, image[0], anna, ["Effusion"], uncertain=["Nodule"])  # consensus of 2
    review(engine, image[0], bert, ["Effusion"], uncertain=["Nodule"])
    review(engine, image[1], anna, ["Mass"])  # disputed, then adjudicated
    review(engine, image[1], bert, ["Cardiomegaly"])
    with session_scope(engine) as session:
        adjudicate(session, image[1], session.merge(admin), only("Mass"), False, False, "", None,
                   uncertain=["Hernia"])  # fmt: skip
    review(engine, image[2], anna, ["Atelectasis"])  # disputed, not adjudicated: left out
    review(engine, image[2], bert)
    review(engine, image[3], anna, exclude=True)  # excluded: left out
    review(engine, image[3], bert, exclude=True)
    # image[4]: nobody read it (its label would be the NLP one, here none): not a candidate

    with session_scope(engine) as session:  # write-back is off by default: refused in one sentence
        with pytest.raises(JobParamsError, match="Writing results back is off"):
            enqueue_pacs_label_write_back(session, connection_id)
        refused = enqueue_job(session, PacsLabelWriteBackParams(connection_id).to_dict(),
                              kind=JOB_PACS_LABEL_WRITE_BACK).id  # fmt: skip
    worker = Worker(engine, settings=fast_settings())
    assert worker.run_once() == refused
    with session_scope(engine) as session:
        job = get_job(session, refused)
        assert (job.status, job.error) == (
            "failed", "Writing results back is off for the PACS connection 'Label PACS'; turn it on first."
        )  # fmt: skip
        pacs.set_write_back(session, connection_id, True)
        job_id = enqueue_pacs_label_write_back(session, connection_id).id

    statements: list[str] = []
    listen = lambda *args: statements.append(args[2])  # noqa: E731 - (conn, cursor, statement, ...)
    event.listen(engine, "before_cursor_execute", listen)
    try:
        with session_scope(engine, read_only=True) as session:
            candidates = label_candidates(session, connection_id)
            queried = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    finally:
        event.remove(engine, "before_cursor_execute", listen)
    assert len(queried) == 1  # the candidates in one query
    assert sorted(c.left_out for c in candidates) == ["", "", "disputed", "excluded"]

    assert worker.run_once() == job_id
    with session_scope(engine, read_only=True) as session:
        job = get_job(session, job_id)
        assert job.status == "succeeded", job.error
        assert job.progress["message"] == (
            "Wrote 2 reader labels back to the PACS (0 already there; left out: 1 excluded, "
            "1 disputed and not adjudicated)."
        )
    expected = {
        0: ("consensus", 2, {"Effusion": "present", "Nodule": "uncertain"}),
        1: ("adjudication", 2, {"Mass": "present", "Hernia": "uncertain"}),
    }
    for number, instance in enumerate(planted):
        srs = label_srs(orthanc, instance.study_uid)
        if number not in expected:
            assert srs == [], number
            continue
        [(ds, data)] = srs
        decided_by, n_readers, states = expected[number]
        back = read_label_sr(ds)
        assert back["image"] == instance.sop_uid
        assert (back["decided_by"], back["n_readers"]) == (decided_by, n_readers)
        assert back["findings"] == {f: states.get(f, "absent") for f in FINDINGS}
        assert back["notice"].startswith("Research use only")
        assert ds.StudyInstanceUID == instance.study_uid and ds.PatientID == instance.patient_id
        assert ds.SeriesInstanceUID != instance.series_uid
        for name in (*READER_NAMES, "labeladmin"):  # readers are counted, never named
            assert name.encode() not in data
        sent = tmp_path / f"label-{number}.dcm"  # what the PACS holds passes the validator too
        sent.write_bytes(data)
        iod, errors, warnings = dciodvfy(sent)
        assert (iod, errors, unaccepted(warnings)) == ("ComprehensiveSR", [], [])

    instances = len(orthanc.rest("GET", "/instances").json())
    assert instances == 5 + 2
    again = write_back_labels(engine, connection_id)  # the same labels: nothing new
    assert (again.sent, again.already_there, again.excluded, again.disputed) == (0, 2, 1, 1)
    review(engine, image[0], bert, ["Effusion"], uncertain=["Nodule"], version=1)  # saved again, same label
    assert write_back_labels(engine, connection_id).sent == 0
    assert len(orthanc.rest("GET", "/instances").json()) == instances

    with session_scope(engine) as session:  # a changed label is a new object beside the first one
        adjudicate(session, image[0], session.merge(admin), only("Effusion", "Edema"), False, False, "", None)
    changed = write_back_labels(engine, connection_id)
    assert (changed.sent, changed.already_there) == (1, 1)
    both = {read_label_sr(ds)["decided_by"]: ds for ds, _ in label_srs(orthanc, planted[0].study_uid)}
    assert sorted(both) == ["adjudication", "consensus"]
    assert both["adjudication"].SeriesInstanceUID == both["consensus"].SeriesInstanceUID  # one series
    assert read_label_sr(both["adjudication"])["findings"]["Edema"] == "present"
    assert read_label_sr(both["consensus"])["findings"]["Edema"] == "absent"
    # The amendment names the label it replaces (Predecessor Documents), and still passes the validator.
    [predecessor] = both["adjudication"].PredecessorDocumentsSequence
    assert predecessor.StudyInstanceUID == planted[0].study_uid
    [series] = predecessor.ReferencedSeriesSequence
    assert series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == both["consensus"].SOPInstanceUID
    assert "PredecessorDocumentsSequence" not in both["consensus"]
    amended = tmp_path / "label-amended.dcm"
    amended.write_bytes(next(data for ds, data in label_srs(orthanc, planted[0].study_uid)
                             if ds.SOPInstanceUID == both["adjudication"].SOPInstanceUID))  # fmt: skip
    iod, errors, warnings = dciodvfy(amended)
    assert (iod, errors, unaccepted(warnings)) == ("ComprehensiveSR", [], [])
    # What was sent is recorded: the next run neither sends nor asks the PACS, even once it is gone.
    with session_scope(engine, read_only=True) as session:
        recorded = {c.item.image_id: c.last_sent for c in label_candidates(session, connection_id)}
    assert recorded[image[0]] == both["adjudication"].SOPInstanceUID
    orthanc.rest("DELETE", f"/instances/{orthanc_id(orthanc, both['adjudication'].SOPInstanceUID)}")
    assert write_back_labels(engine, connection_id).already_there == 2


def _label_button_page() -> None:
    import streamlit as st

    from webapp.formatting import show_flash
    from webapp.pacs_label_section import label_write_back_button

    show_flash()
    state = st.session_state
    label_write_back_button(state["connection_id"], state["write_back"], state["user_id"])


def test_the_label_button_queues_the_job_and_refuses_in_one_sentence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fast_password_hashing: None
) -> None:
    from streamlit.testing.v1 import AppTest

    from db.engine import dispose_engine, get_engine
    from db.models import TrainingJob
    from webapp.formatting import plain

    url = f"sqlite:///{tmp_path / 'studio.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    engine = get_engine(url)
    try:
        with session_scope(engine) as session:
            admin_id = accounts.create_user(session, "boss", TEST_PASSWORD, role="admin").id
            connection_id = pacs.create_connection(session, "Off PACS", "http://127.0.0.1:9/dicom-web").id
        at = AppTest.from_function(_label_button_page, default_timeout=60)
        for name, value in {"connection_id": connection_id, "write_back": False, "user_id": admin_id}.items():
            at.session_state[name] = value
        at.run()
        [button] = at.button
        assert button.label == "Write reader labels back" and button.disabled
        at.session_state["write_back"] = True  # the page thought it on: the database says no
        at.run()
        at.button[0].click()
        at.run()
        assert not at.exception, at.exception
        assert [e.value for e in at.error] == [
            plain("Writing results back is off for the PACS connection 'Off PACS'; turn it on first.")
        ]
        with session_scope(engine) as session:
            pacs.set_write_back(session, connection_id, True)
        at.button[0].click()
        at.run()
        assert not at.exception and not at.error
        with session_scope(engine, read_only=True) as session:
            [job] = session.scalars(select(TrainingJob)).all()
            assert (job.kind, job.params) == (JOB_PACS_LABEL_WRITE_BACK, {"connection_id": connection_id})
        assert at.success[0].value == f"Job #{job.id} queued: write reader labels back to the PACS."
    finally:
        dispose_engine(url)
