"""Issue 18 against a real PACS (Debian's Orthanc, started by tests/orthanc_fixtures.py): NIH sample PNGs
stored as DICOM with planted identities, imported de-identified through the worker's pacs_import job,
searched for the planted identities everywhere the app writes, results written back as an SR and a
Secondary Capture and read back, and the PACS's faults as one sentence each."""

from __future__ import annotations

import http.server
import io
import json
import logging
import socket
import threading
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from sqlalchemy import Engine, select
from streamlit.testing.v1 import AppTest

from core.errors import Cancelled, UserError
from core.imaging.deidentify import InstanceRefused, deidentify, pseudonymous_uid, seal, unseal
from core.imaging.dicom_sr import read_findings_sr
from core.imaging.reader import read_xray
from core.inference.artifact import new_card, save_artifact
from core.inference.models import create_model
from core.inference.predictor import Predictor
from core.labels import FINDINGS
from core.paths import REPO_ROOT
from db import accounts, pacs
from db.engine import dispose_engine, get_engine, session_scope
from db.export import write_labels_csv
from db.jobs import enqueue_job, get_job
from db.models import Image, PacsInstance, Prediction, TrainingJob
from db.registry import promote_version, register_existing_model
from db.reviews import review_queue, save_review
from jobs.dicomweb import PacsClient, PacsError, PacsSettings, SearchCriteria
from jobs.pacs_import import JOB_PACS_IMPORT, PacsImportParams, import_instances
from jobs.pacs_write_back import JOB_PACS_WRITE_BACK, PacsWriteBackParams, model_identity, write_back_results
from jobs.queue import enqueue_predict
from jobs.worker import Worker
from tests.admin_helpers import fast_settings
from tests.db_fixtures import TEST_PASSWORD
from tests.orthanc_fixtures import (
    PLANTED_IDENTITIES,
    PLANTED_NAME_PREFIX,
    OrthancServer,
    dicom_from_png,
    running_orthanc,
    search_database,
    search_files,
    store_sample_studies,
    stow,
)
from webapp.auth import SessionUser
from webapp.formatting import plain

KEY = bytes(range(32))
PLANTED = list(PLANTED_IDENTITIES)


@pytest.fixture(autouse=True)
def own_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every file the app writes (uploads, the pseudonym key) lands here, to be searched afterwards."""
    home = tmp_path / "home"
    monkeypatch.setenv("CHEXNET_HOME", str(home))
    return home


def basic(server: OrthancServer, password: str | None = None) -> PacsSettings:
    return PacsSettings(server.dicomweb_url, "basic", server.user, password or server.password, timeout_s=10)


def add_connection(engine: Engine, server: OrthancServer, *, write_back: bool = False) -> int:
    with session_scope(engine) as session:
        return pacs.create_connection(
            session, "Test PACS", server.dicomweb_url, auth="basic", username=server.user,
            secret=server.password, write_back=write_back,
        ).id  # fmt: skip


def pngs(sample_dir: Path, n: int, start: int = 0) -> list[Path]:
    return sorted((sample_dir / "images").glob("*.png"))[start : start + n]


# ------------------------------------------------------------------------------------------------------
# De-identification (no PACS needed)


def test_deidentify_drops_identity_keeps_characteristics_and_pseudonyms_are_stable(sample_dir: Path) -> None:
    ds, planted = dicom_from_png(pngs(sample_dir, 1)[0], number=7, view="PA", age="093Y", sex="M")
    first = deidentify(ds, KEY)
    for text in [*PLANTED, planted.patient_id, planted.study_uid, planted.sop_uid, planted.series_uid]:
        assert text.encode() not in first.data, text
    clean = pydicom.dcmread(io.BytesIO(first.data))
    assert clean.PatientIdentityRemoved == "YES"
    assert [c.CodeValue for c in clean.DeidentificationMethodCodeSequence] == ["113100", "113108"]
    assert (clean.ViewPosition, clean.PatientSex, clean.PatientAge) == ("PA", "M", "090Y")  # > 89 grouped
    assert clean.PatientID == first.patient_pseudonym and not clean.PatientBirthDate
    assert all(element.tag.group != 0x0009 for element in clean)  # private tags gone
    assert "ImageComments" not in clean and "InstitutionName" not in clean
    assert np.array_equal(clean.pixel_array, ds.pixel_array)
    again = deidentify(ds, KEY)  # a re-import maps to the same pseudonyms ...
    assert (again.patient_pseudonym, again.study_uid, again.sop_uid) == (
        first.patient_pseudonym, first.study_uid, first.sop_uid,
    )  # fmt: skip
    other = deidentify(ds, bytes(32))  # ... and another key to others
    assert other.patient_pseudonym != first.patient_pseudonym and other.study_uid != first.study_uid
    assert len(first.study_uid) <= 64 and first.study_uid.startswith("2.25.")
    assert read_xray(first.data).pixels.shape == (512, 512)


def test_deidentify_refuses_what_is_not_a_single_frontal_radiograph(sample_dir: Path) -> None:
    png = pngs(sample_dir, 1)[0]
    lateral, _ = dicom_from_png(png, number=1, view="LL")
    with pytest.raises(InstanceRefused, match="view position is LL, not a frontal"):
        deidentify(lateral, KEY)
    frames, _ = dicom_from_png(png, number=2, view="PA")
    frames.NumberOfFrames = 3
    with pytest.raises(InstanceRefused, match="multi-frame image \\(3 frames\\)"):
        deidentify(frames, KEY)
    report, _ = dicom_from_png(png, number=3, view="PA")
    report.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"
    with pytest.raises(InstanceRefused, match="not a radiograph"):
        deidentify(report, KEY)
    burned, _ = dicom_from_png(png, number=4, view="AP")
    burned.BurnedInAnnotation = "YES"
    with pytest.raises(InstanceRefused, match="burned-in annotation"):
        deidentify(burned, KEY)


def test_sealed_links_open_only_with_their_key_and_pseudonym() -> None:
    sealed = seal(KEY, "2.25.1", '["1.2.3", "1.2.3.4"]')
    assert "1.2.3" not in bytes.fromhex(sealed).decode("latin-1")
    assert unseal(KEY, "2.25.1", sealed) == '["1.2.3", "1.2.3.4"]'
    for key, nonce in ((bytes(32), "2.25.1"), (KEY, "2.25.2")):
        with pytest.raises(ValueError):
            unseal(key, nonce, sealed)


# ------------------------------------------------------------------------------------------------------
# Import from the PACS, end to end


def plant_problem_instances(server: OrthancServer, sample_dir: Path) -> dict[str, str]:
    """Besides the frontal ones: a lateral, a multi-frame, a truncated (corrupt) image and a non-image
    (an SR, in the lateral's study: a study of only SRs is no CR/DX study and is not even found): what
    must be left out, each with its sentence."""
    png = pngs(sample_dir, 1, start=60)[0]
    lateral, a = dicom_from_png(png, number=901, view="LL")
    frames, b = dicom_from_png(png, number=902, view="PA", modality="DX")
    frames.NumberOfFrames = 2
    frames.PixelData = frames.PixelData * 2
    corrupt, c = dicom_from_png(png, number=903, view="AP")
    corrupt.PixelData = corrupt.PixelData[: len(corrupt.PixelData) // 3]
    report, d = dicom_from_png(png, number=904, view="PA", study_uid=a.study_uid)  # a CR study's SR
    report.SOPClassUID = report.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"
    report.Modality = "SR"
    del report.PixelData
    stow(server, [lateral, frames, corrupt, report])
    return {a.sop_uid: "view position is LL", b.sop_uid: "multi-frame", c.sop_uid: "damaged",
            d.sop_uid: "not a radiograph"}  # fmt: skip


def test_import_job_imports_frontal_images_deidentified_and_no_planted_identity_survives(
    engine: Engine, orthanc: OrthancServer, sample_dir: Path, own_home: Path, caplog, make_user
) -> None:
    caplog.set_level(logging.DEBUG)
    planted = store_sample_studies(orthanc, sample_dir, 50)
    problems = plant_problem_instances(orthanc, sample_dir)
    connection_id = add_connection(engine, orthanc)
    with session_scope(engine) as session:
        job_id = enqueue_job(session, PacsImportParams(connection_id).to_dict(), kind=JOB_PACS_IMPORT).id
    assert Worker(engine, settings=fast_settings()).run_once() == job_id
    with session_scope(engine, read_only=True) as session:
        job = get_job(session, job_id)
        assert job.status == "succeeded", job.error
        assert job.progress["message"] == (
            "Imported 50 of 54 instances in 53 studies (4 left out, listed with why; 0 done before)."
        )
        assert job.progress["fraction"] == 1.0
        images = session.scalars(select(Image).order_by(Image.id)).all()
        rows = session.scalars(select(PacsInstance).order_by(PacsInstance.id)).all()
        skipped = pacs.skipped_instances(session, connection_id)
    assert len(images) == 50 and {i.source for i in images} == {"upload"}
    assert {i.view for i in images} <= {"PA", "AP"} and len({i.patient_id for i in images}) == 50
    assert all(i.patient_id > pacs.PATIENT_ID_BASE for i in images)
    key = pacs.pseudonym_key()
    reasons = {pseudonymous_uid(key, sop): why for sop, why in problems.items()}
    assert {sop for sop, _ in skipped} == set(reasons)
    for sop, why in skipped:
        assert reasons[sop] in why, why
    by_sop = {row.sop_pseudonym: row for row in rows}
    for instance in planted:  # kept: age, sex, view; the pseudonym is the keyed hash of the source UID
        row = by_sop[pseudonymous_uid(key, instance.sop_uid)]
        kept = (row.status, row.view, row.patient_sex, row.patient_age)
        assert kept == ("imported", instance.view, "F", "045Y")
    for path in (Path(image.path) for image in images):
        assert path.is_relative_to(own_home / "uploads") and path.read_bytes()[128:132] == b"DICM"

    reader = make_user("reader")
    with session_scope(engine, read_only=True) as session:  # in the readers' queue like dataset images
        queue = review_queue(session, reader, "unreviewed", limit=100)
    assert {item.image_id for item in queue} == {image.id for image in images}
    with session_scope(engine) as session:  # a reviewed PACS image is exported like an upload
        reader = session.merge(reader)
        effusion = {f: f == "Effusion" for f in FINDINGS}
        save_review(session, images[0].id, reader, effusion, False, False, "", None)
    with session_scope(engine, read_only=True) as session:  # (searched below with the other files)
        assert write_labels_csv(session, own_home / "exports" / "labels.csv") == 1

    needles = [*PLANTED, *(p.study_uid for p in planted), *(p.sop_uid for p in planted)]
    assert search_database(engine, needles) == []
    assert search_files(own_home, needles) == []
    assert not [n for n in needles if n.lower() in caplog.text.lower()]
    # The searches do find what is there: the PACS's own files hold the names, the database the pseudonyms.
    assert search_files(orthanc.folder, [PLANTED_NAME_PREFIX])
    # An imported one (a left-out instance has a pacs_instances row only): there and in the image's file name.
    pseudonym = next(row.sop_pseudonym for row in rows if row.status == "imported")
    assert search_database(engine, [pseudonym]) == [f"images: {pseudonym}", f"pacs_instances: {pseudonym}"]

    # Again (a resume, or the same search later): nothing new, nothing fetched twice, same pseudonyms.
    again = import_instances(engine, connection_id, SearchCriteria())
    assert (again.imported, again.skipped, again.already_done) == (0, 0, 54)
    with session_scope(engine, read_only=True) as session:
        assert session.query(Image).count() == 50


def test_import_cancels_between_instances_and_resumes_without_duplicates(
    sqlite_engine: Engine, orthanc: OrthancServer, sample_dir: Path
) -> None:
    store_sample_studies(orthanc, sample_dir, 6)
    connection_id = add_connection(sqlite_engine, orthanc)
    seen: list[tuple[int, int]] = []
    with pytest.raises(Cancelled) as cancelled:
        import_instances(
            sqlite_engine, connection_id, SearchCriteria(), progress=lambda d, t: seen.append((d, t)),
            should_stop=lambda: len(seen) > 2,
        )  # fmt: skip
    assert str(cancelled.value) == (
        "Cancelled after 2 of 6 instances (2 imported, 0 left out); run the import again to continue."
    )
    assert seen == [(0, 6), (1, 6), (2, 6)]
    resumed = import_instances(sqlite_engine, connection_id, SearchCriteria())
    assert (resumed.imported, resumed.already_done) == (4, 2)
    with session_scope(sqlite_engine, read_only=True) as session:
        assert session.query(Image).count() == 6
        assert session.query(PacsInstance).count() == 6


def test_an_instance_deleted_after_the_search_is_left_out_with_why(
    sqlite_engine: Engine, orthanc: OrthancServer, sample_dir: Path
) -> None:
    planted = store_sample_studies(orthanc, sample_dir, 3)
    connection_id = add_connection(sqlite_engine, orthanc)

    def delete_one(done: int, total: int) -> None:
        if done == 0:  # between the search and the fetches
            [found] = orthanc.rest("POST", "/tools/lookup", data=planted[1].sop_uid).json()
            orthanc.rest("DELETE", found["Path"])

    summary = import_instances(sqlite_engine, connection_id, SearchCriteria(), progress=delete_one)
    assert (summary.imported, summary.skipped) == (2, 1)
    [why] = summary.skip_reasons
    assert why == "The PACS no longer holds this instance (it was deleted after the search)."


def test_search_filters_by_date_modality_and_description(orthanc: OrthancServer, sample_dir: Path) -> None:
    store_sample_studies(orthanc, sample_dir, 4)  # CR, DX, CR, DX on 2026-11-01, "CHEST for ..."
    client = PacsClient(basic(orthanc))
    assert len(client.search_instances(SearchCriteria())) == 4
    assert len(client.search_studies(SearchCriteria(modalities=("DX",)))) == 2
    assert len(client.search_studies(SearchCriteria(date_from="20261101", date_to="20261101"))) == 4
    assert client.search_studies(SearchCriteria(date_to="20261031")) == []
    assert len(client.search_studies(SearchCriteria(description="chest*"))) == 4
    assert client.search_studies(SearchCriteria(description="abdomen*")) == []
    with pytest.raises(PacsError, match="Only chest radiographs"):
        SearchCriteria(modalities=("CT",))
    with pytest.raises(PacsError, match="YYYYMMDD"):
        SearchCriteria(date_from="2026-11-01")


# ------------------------------------------------------------------------------------------------------
# Write-back: an SR and a Secondary Capture in the source study


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> Predictor:
    torch.manual_seed(0)
    artifact = save_artifact(
        create_model(), tmp_path_factory.mktemp("pacs-model") / "m", new_card("pacs-random"), half=False
    )
    return Predictor(artifact, backend="torch", device="cpu")


def test_results_are_written_back_as_sr_and_secondary_capture_and_read_back(
    sqlite_engine: Engine, orthanc: OrthancServer, sample_dir: Path, predictor: Predictor
) -> None:
    planted = store_sample_studies(orthanc, sample_dir, 2)
    connection_id = add_connection(sqlite_engine, orthanc)
    import_instances(sqlite_engine, connection_id, SearchCriteria())
    with session_scope(sqlite_engine) as session:
        version = register_existing_model(session, predictor.artifact.path)
        promote_version(session, version.id)
        version_id = version.id
        params = PacsWriteBackParams(connection_id).to_dict()
        refused = enqueue_job(session, params, kind=JOB_PACS_WRITE_BACK).id
    worker = Worker(sqlite_engine, settings=fast_settings())
    assert worker.run_once() == refused
    with session_scope(sqlite_engine) as session:
        job = get_job(session, refused)
        assert (job.status, job.error) == (
            "failed",
            "Writing results back is off for the PACS connection 'Test PACS'; turn it on first.",
        )  # off by default
        pacs.set_write_back(session, connection_id, True)
        job_id = enqueue_job(session, params, kind=JOB_PACS_WRITE_BACK).id
    assert worker.run_once() == job_id
    with session_scope(sqlite_engine, read_only=True) as session:
        job = get_job(session, job_id)
        assert job.status == "succeeded", job.error
        assert job.progress["message"] == "Wrote 2 reports and heat maps back to the PACS with pacs-random."
    model = model_identity(predictor, "pacs-random", version_id)
    assert write_back_results(sqlite_engine, connection_id, predictor, model) == 0  # each once
    with session_scope(sqlite_engine) as session:  # the predict job predicts imported images like the others
        predict_id = enqueue_predict(session).id
    assert worker.run_once() == predict_id
    with session_scope(sqlite_engine, read_only=True) as session:
        assert get_job(session, predict_id).status == "succeeded"
        stored_predictions = {p.image_id: p for p in session.scalars(select(Prediction))}
        assert len(stored_predictions) == 2

    client = PacsClient(basic(orthanc))
    with session_scope(sqlite_engine, read_only=True) as session:
        stored = {row.sop_pseudonym: row.image_id for row in session.scalars(select(PacsInstance))}
        paths = {image.id: image.path for image in session.scalars(select(Image))}
    key = pacs.pseudonym_key()
    for instance in planted:
        series = client._client.search_for_series(instance.study_uid, fields=["Modality"])
        modalities = sorted(s["00080060"]["Value"][0] for s in series)
        assert modalities == sorted([instance.modality, "SR", "OT"])
        new_series = [s["0020000E"]["Value"][0] for s in series if s["00080060"]["Value"][0] in ("SR", "OT")]
        assert instance.series_uid not in new_series
        [sr_ref] = client._client.search_for_instances(instance.study_uid, search_filters={"Modality": "SR"})
        [sc_ref] = client._client.search_for_instances(instance.study_uid, search_filters={"Modality": "OT"})

        def fetch(ref):
            uid = lambda tag: ref[tag]["Value"][0]  # noqa: E731
            return client._client.retrieve_instance(uid("0020000D"), uid("0020000E"), uid("00080018"))

        report = read_findings_sr(fetch(sr_ref))
        data = Path(paths[stored[pseudonymous_uid(key, instance.sop_uid)]]).read_bytes()
        expected = predictor.predict_one(read_xray(data).pixels, file_bytes=data)
        assert report["notice"].startswith("Research use only")
        assert report["model"] == {"name": "pacs-random", "version": f"pacs-random (#{version_id})",
                                   "sha256": predictor.artifact.weights_digest()}  # fmt: skip
        assert report["image"] == instance.sop_uid
        assert report["ood"]["flagged"] == expected.ood.flagged
        assert list(report["findings"]) == list(FINDINGS)
        for finding, values in report["findings"].items():
            assert values["probability"] == pytest.approx(expected.probabilities[finding], abs=1e-6)
            assert values["threshold"] == pytest.approx(predictor.thresholds[finding], abs=1e-6)
            assert values["above"] == (expected.probabilities[finding] >= predictor.thresholds[finding])
        capture = fetch(sc_ref)
        assert capture.StudyInstanceUID == instance.study_uid and capture.PatientID == instance.patient_id
        assert capture.SourceImageSequence[0].ReferencedSOPInstanceUID == instance.sop_uid
        assert capture.pixel_array.shape == (512, 512, 3)
        assert expected.most_probable() in capture.SeriesDescription
        # Filed with the source patient (Orthanc keeps one patient and one study for all three series).
    patients = orthanc.rest("GET", "/patients").json()
    assert len(patients) == 2
    assert len(orthanc.rest("GET", "/studies").json()) == 2


# ------------------------------------------------------------------------------------------------------
# Faults: one plain sentence each, nothing half-imported


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_pacs_down_and_wrong_credentials_are_one_sentence_each(orthanc: OrthancServer) -> None:
    port = free_port()
    down = PacsClient(PacsSettings(f"http://127.0.0.1:{port}/dicom-web", timeout_s=2))
    with pytest.raises(PacsError) as caught:
        down.check()
    assert str(caught.value) == (
        f"The PACS at 127.0.0.1:{port} cannot be reached; check that it is running and that the address "
        "is right."
    )
    where = orthanc.http_url.removeprefix("http://")
    with pytest.raises(PacsError) as caught:
        PacsClient(basic(orthanc, password="wrong-password")).check()
    assert str(caught.value) == (
        f"The PACS at {where} refused the user name or password; check the connection's credentials."
    )
    assert "wrong-password" not in str(caught.value)
    with pytest.raises(PacsError, match="asks for credentials"):
        PacsClient(PacsSettings(orthanc.dicomweb_url)).check()
    with pytest.raises(PacsError, match="refused the token"):
        PacsClient(PacsSettings(orthanc.dicomweb_url, "bearer", secret="not-a-token")).check()
    with pytest.raises(PacsError, match="own fields"):
        PacsSettings(f"http://u:p@{where}/dicom-web")
    PacsClient(basic(orthanc)).check()  # the right ones work


def test_a_failed_import_says_why_in_the_job_and_stores_nothing(
    sqlite_engine: Engine, orthanc: OrthancServer, sample_dir: Path
) -> None:
    store_sample_studies(orthanc, sample_dir, 2)
    with session_scope(sqlite_engine) as session:
        connection_id = pacs.create_connection(
            session, "Wrong", orthanc.dicomweb_url, auth="basic", username=orthanc.user, secret="nope-nope"
        ).id
        job_id = enqueue_job(session, PacsImportParams(connection_id).to_dict(), kind=JOB_PACS_IMPORT).id
    Worker(sqlite_engine, settings=fast_settings()).run_once()
    with session_scope(sqlite_engine, read_only=True) as session:
        job = get_job(session, job_id)
        assert job.status == "failed"
        assert job.error.endswith("refused the user name or password; check the connection's credentials.")
        assert session.query(Image).count() == 0 and session.query(PacsInstance).count() == 0


def test_pacs_going_down_mid_import_leaves_nothing_half_imported_and_the_import_resumes(
    sqlite_engine: Engine, sample_dir: Path, tmp_path: Path
) -> None:
    """A PACS of its own, stopped after 3 of 6 instances and started again on the same storage."""
    folder = tmp_path / "pacs"
    with running_orthanc(folder) as server:
        store_sample_studies(server, sample_dir, 6)
        connection_id = add_connection(sqlite_engine, server)

        def stop_the_pacs(done: int, total: int) -> None:
            if done == 3:
                server.stop()

        with pytest.raises(PacsError, match="cannot be reached; check that it is running"):
            import_instances(sqlite_engine, connection_id, SearchCriteria(), progress=stop_the_pacs)
    with session_scope(sqlite_engine, read_only=True) as session:
        images = session.scalars(select(Image)).all()
        assert len(images) == 3 and session.query(PacsInstance).count() == 3
        assert all(read_xray(Path(image.path).read_bytes()).pixels.shape == (512, 512) for image in images)
    port = int(server.http_url.rsplit(":", 1)[1])
    with running_orthanc(folder, port):  # back up, same address: the import carries on where it stopped
        resumed = import_instances(sqlite_engine, connection_id, SearchCriteria())
    assert (resumed.imported, resumed.already_done) == (3, 3)


class _Silent(threading.Thread):
    """A server that accepts connections and never answers (a hung PACS)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(4)
        self.port = self.socket.getsockname()[1]
        self.held: list[socket.socket] = []

    def run(self) -> None:
        try:
            while True:
                self.held.append(self.socket.accept()[0])
        except OSError:
            return


class _Failing(http.server.BaseHTTPRequestHandler):
    """HTTP 500 for an import's study search; for anything else, a body that breaks off half way."""

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        if "ModalitiesInStudy" in self.path:
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"internal error")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self.wfile.write(b'[{"0020000D": ')  # and the connection closes

    def log_message(self, *args) -> None:
        pass


def test_timeouts_and_server_errors_are_one_sentence_each() -> None:
    silent = _Silent()
    silent.start()
    try:
        with pytest.raises(PacsError) as caught:
            PacsClient(PacsSettings(f"http://127.0.0.1:{silent.port}/dicom-web", timeout_s=0.5)).check()
        assert str(caught.value) == (
            f"The PACS at 127.0.0.1:{silent.port} did not answer within 0.5 seconds while testing the "
            "connection."
        )
    finally:
        silent.socket.close()
        for held in silent.held:
            held.close()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        with pytest.raises(PacsError) as caught:
            PacsClient(PacsSettings(f"http://127.0.0.1:{port}/dicom-web")).search_instances(SearchCriteria())
        assert str(caught.value) == (
            f"The PACS at 127.0.0.1:{port} failed with an internal error (HTTP 500) while searching for "
            "studies; try again later."
        )
        with pytest.raises(PacsError) as caught:
            PacsClient(PacsSettings(f"http://127.0.0.1:{port}/dicom-web")).check()
        assert str(caught.value) == (
            f"The transfer from the PACS at 127.0.0.1:{port} broke off while testing the connection; "
            "try again."
        )
    finally:
        server.shutdown()
        server.server_close()


def test_connections_never_show_their_secret(sqlite_engine: Engine, orthanc: OrthancServer) -> None:
    add_connection(sqlite_engine, orthanc)
    with session_scope(sqlite_engine, read_only=True) as session:
        [summary] = pacs.list_connections(session)
    assert summary.has_secret and not summary.write_back
    assert orthanc.password not in json.dumps(summary.__dict__)
    assert search_database(sqlite_engine, [orthanc.password]) == []  # sealed at rest
    with session_scope(sqlite_engine, read_only=True) as session:
        assert pacs.connection_secret(pacs.connection_row(session, summary.id)) == orthanc.password
    with pytest.raises(UserError, match="already exists"):
        add_connection(sqlite_engine, orthanc)


# ------------------------------------------------------------------------------------------------------
# The admin page's section


def test_admin_adds_a_connection_previews_and_imports_from_the_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, orthanc: OrthancServer, sample_dir: Path,
    fast_password_hashing,
) -> None:  # fmt: skip
    store_sample_studies(orthanc, sample_dir, 3)
    url = f"sqlite:///{tmp_path / 'studio.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    engine = get_engine(url)
    with session_scope(engine) as session:
        admin_id = accounts.create_user(session, "boss", TEST_PASSWORD, role="admin").id
    try:
        at = AppTest.from_file(str(REPO_ROOT / "webapp" / "views" / "admin.py"), default_timeout=60)
        at.session_state["user"] = SessionUser(admin_id, "boss", "admin")
        at.run()
        assert not at.exception, at.exception

        def save(password: str) -> None:
            at.text_input(key="pacs_name").set_value("Orthanc")
            at.text_input(key="pacs_url").set_value(orthanc.dicomweb_url)
            at.radio(key="pacs_auth").set_value("basic")
            at.text_input(key="pacs_user").set_value(orthanc.user)
            at.text_input(key="pacs_secret").set_value(password)
            next(b for b in at.button if b.label == "Save connection").click()
            at.run()
            assert not at.exception, at.exception

        save("wrong-password")
        assert [e.value for e in at.error] == [
            plain(
                f"The PACS at {orthanc.http_url.removeprefix('http://')} refused the user name or password; "
                "check the connection's credentials."
            )
        ]
        save(orthanc.password)
        assert not at.error and "Connection Orthanc saved; the PACS answered." in at.success[0].value
        shown = at.dataframe[-1].value
        assert list(shown["secret"]) == ["set"] and list(shown["write back"]) == [False]
        assert orthanc.password not in shown.to_csv()
        next(b for b in at.button if b.label == "Preview count").click()
        at.run()
        assert at.info[-1].value.startswith("3 studies with 3 instances match")
        next(b for b in at.button if b.label == "Import from the PACS").click()
        at.run()
        assert not at.exception and not at.error
        assert at.success[0].value.endswith("queued: import from the PACS.")
        with session_scope(engine, read_only=True) as session:
            [job] = session.scalars(select(TrainingJob).where(TrainingJob.kind == JOB_PACS_IMPORT)).all()
        assert Worker(engine, settings=fast_settings()).run_once() == job.id
        with session_scope(engine, read_only=True) as session:
            assert get_job(session, job.id).status == "succeeded"
            assert session.query(Image).count() == 3
        at.run()  # the job panel says how it went
        assert not at.exception, at.exception
        assert plain(
            "Imported 3 of 3 instances in 3 studies (0 left out, listed with why; 0 done before)."
        ) in [e.value for e in at.success]
    finally:
        dispose_engine(url)
