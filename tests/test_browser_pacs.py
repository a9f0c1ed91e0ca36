"""Browser: issue 18 end to end against a real PACS (Debian's Orthanc, tests/orthanc_fixtures.py) with a real
worker process (`python -m jobs`) and `streamlit run`, in Debian's Chromium.

50 NIH sample PNGs are stored in Orthanc as CR/DX instances full of planted identities, plus a lateral.
The admin adds the connection on the Fine-tune page (basic authentication, write-back on), previews the
count and imports (50 imported, the lateral left out); stores the model's predictions and queues the
write-back, which the worker runs while a clinician reads an imported image and saves. Read back from
Orthanc, every source study holds an SR and a Secondary Capture in new series, the SR's findings those of
the stored predictions; and no planted name, ID or UID is anywhere in the database, under CHEXNET_HOME
(logs included) or on any page shown.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from core.imaging.deidentify import pseudonymous_uid
from core.imaging.dicom_sr import read_findings_sr
from core.labels import FINDINGS
from core.paths import REPO_ROOT
from db import accounts, pacs
from db.engine import dispose_engine, get_engine, session_scope
from db.models import Image, PacsInstance, Prediction, Review
from db.registry import promote_version, register_existing_model
from jobs.dicomweb import PacsClient, PacsSettings
from tests.admin_helpers import ONE_THREAD_ENV, PASSWORD, tiny_model
from tests.browser_fixtures import click_in_sidebar, log_in, settle, streamlit_server
from tests.orthanc_fixtures import (
    PLANTED_IDENTITIES,
    PLANTED_NAME_PREFIX,
    dicom_from_png,
    search_database,
    search_files,
    store_sample_studies,
    stow,
)

pytestmark = pytest.mark.browser

ADMIN, READER = "pacs-admin", "dr-pacs"
N_FRONTAL = 50
PLANTED = list(PLANTED_IDENTITIES)
IMPORTED_NAME = re.compile(r"pacs-2\.25\.\d+\.dcm")


@pytest.fixture
def pacs_app(tmp_path, monkeypatch, orthanc, sample_dir):
    """Orthanc holding the planted studies; a worker process and a server on one database + CHEXNET_HOME
    (which also holds their logs, searched for the planted identities with everything else)."""
    planted = store_sample_studies(orthanc, sample_dir, N_FRONTAL)
    png = sorted((sample_dir / "images").glob("*.png"))[60]
    lateral, lateral_info = dicom_from_png(png, number=901, view="LL")
    stow(orthanc, [lateral])
    planted.append(lateral_info)

    home = tmp_path / "home"
    (home / "logs").mkdir(parents=True)
    monkeypatch.setenv("CHEXNET_HOME", str(home))  # this process reads the same pseudonym key
    monkeypatch.delenv("CHEXNET_MODEL", raising=False)  # the registry's active version serves
    url = f"sqlite:///{home / 'studio.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    engine = get_engine(url)
    model_dir = tiny_model(tmp_path / "models", "tiny-pacs")
    with session_scope(engine) as session:
        accounts.create_user(session, ADMIN, PASSWORD, role="admin")
        accounts.create_user(session, READER, PASSWORD, role="clinician")
        version = register_existing_model(session, model_dir)
        promote_version(session, version.id)
        version_id = version.id
    env = {"CHEXNET_HOME": str(home), "DATABASE_URL": url, **ONE_THREAD_ENV}
    worker_log = home / "logs" / "worker.log"
    with open(worker_log, "wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "jobs", "--device", "cpu", "--backend", "torch", "--n-boot", "20",
             "--poll", "0.3", "--heartbeat", "1"],
            cwd=REPO_ROOT, env={**os.environ, **env, "PYTHONPATH": str(REPO_ROOT)},
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        with streamlit_server(env, home / "logs" / "app.log") as app_url:  # starts while the worker does
            deadline = time.monotonic() + 120
            while not list((home / "workers").glob("*.json")):
                assert worker.poll() is None and time.monotonic() < deadline, worker_log.read_text()[-3000:]
                time.sleep(0.2)
            yield app_url, engine, home, planted, version_id, worker_log
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        dispose_engine(url)


def wait_for_text(page, text: str, worker_log: Path, timeout_s: float = 60) -> None:
    """Wait for a sentence a job writes; a failure shows the page and the worker's log."""
    try:
        page.get_by_text(text, exact=True).first.wait_for(timeout=timeout_s * 1000)
    except Exception:
        body = page.inner_text("body")[-3000:]
        log = worker_log.read_text()[-3000:]
        raise AssertionError(f"No {text!r} on the page:\n{body}\n--- worker:\n{log}") from None


def fetch(client: PacsClient, study_uid: str, modality: str):
    """The one instance of `modality` in the study, read back from the PACS (WADO-RS)."""
    [ref] = client._client.search_for_instances(study_uid, search_filters={"Modality": modality})
    uid = lambda tag: ref[tag]["Value"][0]  # noqa: E731
    return client._client.retrieve_instance(uid("0020000D"), uid("0020000E"), uid("00080018"))


def pacs_section(page):
    """The PACS section of Fine-tune (it starts collapsed, then stays as the admin left it)."""
    return page.locator(".st-key-pacs_section")


def test_import_read_predict_and_write_back_through_the_pages_leaves_no_phi(new_page, pacs_app, orthanc):
    started = time.perf_counter()
    app_url, engine, home, planted, version_id, worker_log = pacs_app
    shown: list[str] = []  # every page's text at each step, searched for the planted identities at the end
    laps: dict[str, float] = {}

    def lap(name: str) -> None:
        laps[name] = round(time.perf_counter() - started - sum(laps.values()), 1)

    # The admin adds the connection (basic authentication, write-back on) ...
    admin = new_page()
    log_in(admin, app_url, ADMIN, PASSWORD)
    click_in_sidebar(admin, "Fine-tune")
    admin.get_by_text("Training worker").first.wait_for(timeout=30_000)
    section = pacs_section(admin)
    section.get_by_text("Import from a PACS (DICOMweb)").click()
    form = section.get_by_test_id("stForm").filter(has_text="New connection")
    form.get_by_role("textbox", name="Name", exact=True).fill("Orthanc")
    form.get_by_role("textbox", name="DICOMweb address").fill(orthanc.dicomweb_url)
    form.get_by_text("User name and password").click()
    form.get_by_role("textbox", name="User name (basic)").fill(orthanc.user)
    form.get_by_label("Password or token").fill(orthanc.password)
    form.get_by_text("Write results back to this PACS (SR and heat map)").click()
    form.get_by_role("button", name="Save connection").click()
    admin.get_by_text("Connection Orthanc saved; the PACS answered.").wait_for()
    settle(admin)
    shown.append(admin.inner_text("body"))
    lap("log in, save the connection")

    # ... previews what the search finds and imports it: the lateral is left out.
    section.get_by_test_id("stDataFrame").wait_for()  # still open: the connection, its secret only "set"
    section.get_by_role("button", name="Preview count").click()
    # The section stays open through the rerun: the count shows where the button was.
    section.get_by_text(f"{N_FRONTAL + 1} studies with {N_FRONTAL + 1} instances match").wait_for()
    shown.append(admin.inner_text("body"))
    settle(admin)
    section.get_by_role("button", name="Import from the PACS").click()
    admin.get_by_text(re.compile(r"Job #\d+ queued: import from the PACS\.")).wait_for()
    wait_for_text(
        admin,
        f"Imported {N_FRONTAL} of {N_FRONTAL + 1} instances in {N_FRONTAL + 1} studies "
        "(1 left out, listed with why; 0 done before).",
        worker_log,
    )
    shown.append(admin.inner_text("body"))
    with session_scope(engine, read_only=True) as session:
        images = session.scalars(select(Image).order_by(Image.id)).all()
        assert len(images) == N_FRONTAL and all(i.patient_id > pacs.PATIENT_ID_BASE for i in images)
        [(_, why)] = pacs.skipped_instances(session, pacs.list_connections(session)[0].id)
    assert "view position is LL" in why
    lap("preview, import")

    # The admin stores the active model's predictions, then writes the results back: the worker does that
    # while a clinician reads.
    # Settled first: a click while the page still runs (the import's ending redraws it) can be lost.
    settle(admin)
    admin.get_by_test_id("stExpander").filter(has_text="Model predictions for the review queue").click()
    queue_predictions = admin.get_by_role("button", name="Queue predictions")
    queue_predictions.wait_for()
    settle(admin)
    queue_predictions.click()
    admin.get_by_text(re.compile(r"Job #\d+ queued: store predictions of the active model\.")).wait_for()
    admin.get_by_text(re.compile(rf"^Stored {N_FRONTAL} predictions of 'tiny-pacs'")).wait_for(timeout=60_000)
    settle(admin)
    section.get_by_role("button", name="Write results back").click()
    admin.get_by_text(re.compile(r"Job #\d+ queued: write results back to the PACS\.")).wait_for()
    lap("predict, queue the write-back")

    # A clinician reads an imported image (named by its pseudonym, a patient number above 10^9) and saves.
    reader = new_page()
    log_in(reader, app_url, READER, PASSWORD)
    queue = reader.get_by_test_id("stSelectbox").filter(has_text="Queue")
    queue.wait_for(timeout=120_000)
    settle(reader)
    queue.click()
    reader.get_by_role("option", name="Unreviewed first").click()
    title = reader.get_by_role("heading", name=IMPORTED_NAME)
    title.wait_for(timeout=120_000)
    settle(reader)
    name = title.inner_text().strip()
    assert re.search(r"patient 1\d{9}\b", reader.get_by_test_id("stMainBlockContainer").inner_text())
    reader.locator(".st-key-review_f_Effusion button").first.click()
    reader.locator(".st-key-review_f_Effusion [data-testid='stBaseButton-primary']").first.wait_for()
    settle(reader)
    shown.append(reader.inner_text("body"))
    reader.get_by_role("button", name=re.compile("Save & next")).click()
    reader.get_by_text(f"Saved your review of {name} (version 1).").wait_for()
    shown.append(reader.inner_text("body"))
    with session_scope(engine, read_only=True) as session:
        [review] = session.scalars(select(Review)).all()
        image = session.get(Image, review.image_id)
        assert image.original_filename == name and image.patient_id > pacs.PATIENT_ID_BASE
        assert review.effusion is True
    lap("clinician reads (the worker writes back)")

    wait_for_text(
        admin, f"Wrote {N_FRONTAL} reports and heat maps back to the PACS with tiny-pacs.", worker_log
    )
    shown.append(admin.inner_text("body"))
    lap("the write-back ends")
    assert admin.locator("[data-testid='stException']").count() == 0
    assert reader.locator("[data-testid='stException']").count() == 0

    # Read back from Orthanc: each source study holds an SR and a Secondary Capture in new series.
    client = PacsClient(PacsSettings(orthanc.dicomweb_url, "basic", orthanc.user, orthanc.password))
    key = pacs.pseudonym_key()
    with session_scope(engine, read_only=True) as session:
        image_of = {row.sop_pseudonym: row.image_id for row in session.scalars(select(PacsInstance))}
        stored = {
            p.image_id: p.probabilities
            for p in session.scalars(select(Prediction).where(Prediction.model_version_id == version_id))
        }
    assert len(stored) == N_FRONTAL
    frontal, lateral = planted[:N_FRONTAL], planted[N_FRONTAL]
    assert [s["00080060"]["Value"][0] for s in client._client.search_for_series(lateral.study_uid)] == ["CR"]
    for number, source in enumerate(frontal):
        series = client._client.search_for_series(source.study_uid, fields=["Modality"])
        by_modality = {s["00080060"]["Value"][0]: s["0020000E"]["Value"][0] for s in series}
        assert sorted(by_modality) == sorted([source.modality, "SR", "OT"]) and len(series) == 3
        assert source.series_uid not in (by_modality["SR"], by_modality["OT"])
        report = read_findings_sr(fetch(client, source.study_uid, "SR"))
        assert report["image"] == source.sop_uid
        probabilities = stored[image_of[pseudonymous_uid(key, source.sop_uid)]]
        assert list(report["findings"]) == list(FINDINGS)
        for finding, expected in zip(FINDINGS, probabilities, strict=True):
            assert report["findings"][finding]["probability"] == pytest.approx(expected, abs=1e-6), finding
        if number == 0:
            capture = fetch(client, source.study_uid, "OT")
            assert capture.StudyInstanceUID == source.study_uid and capture.PatientID == source.patient_id
            assert capture.SourceImageSequence[0].ReferencedSOPInstanceUID == source.sop_uid
            assert capture.pixel_array.shape[-1] == 3  # the RGB heat map

    # No planted identity anywhere the app writes, nor on any page it showed.
    # (Every planted patient ID starts with PLANTED_ID_PREFIX; the UIDs are each their own.)
    needles = [*PLANTED, *(p.study_uid for p in planted), *(p.series_uid for p in planted),
               *(p.sop_uid for p in planted)]  # fmt: skip
    assert search_database(engine, [*needles, orthanc.password]) == []
    assert search_files(home, needles) == []
    assert (home / "logs" / "app.log").stat().st_size and worker_log.stat().st_size  # searched, not empty
    assert not [n for n in needles if any(n.lower() in text.lower() for text in shown)]
    assert any(name in text for text in shown)  # what was shown is there: the pseudonym the reader read
    assert search_files(orthanc.folder, [PLANTED_NAME_PREFIX])  # the search does find what is there
    lap("read back, search")
    print(f"browser PACS flow: {time.perf_counter() - started:.1f} s after the servers started:", laps)
