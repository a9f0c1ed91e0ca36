"""Issue 18's screening job (jobs.pacs_screen) against the real Orthanc of tests/orthanc_fixtures.py: polls
through the real worker find the new studies, predict them (stored in `predictions`), write an SR and a
Secondary Capture back into each, and never screen a study twice for one model version; a new version
screens them again. And the worker's polling: a job when a connection is due, never two at once."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import torch
from sqlalchemy import Engine, select
from streamlit.testing.v1 import AppTest

from core.errors import Cancelled
from core.imaging.dicom_sr import read_findings_sr
from core.imaging.reader import read_xray
from core.inference.artifact import new_card, save_artifact
from core.inference.models import create_model
from core.inference.predictor import Predictor
from core.labels import FINDINGS
from core.paths import REPO_ROOT
from db import accounts, pacs
from db import pacs_screening as screening
from db.engine import dispose_engine, get_engine, session_scope
from db.jobs import get_job, request_cancel
from db.models import Image, PacsInstance, PacsScreenedStudy, Prediction, TrainingJob, utcnow
from db.registry import promote_version, register_existing_model
from jobs.dicomweb import PacsClient, PacsSettings
from jobs.pacs_screen import JOB_PACS_SCREEN, enqueue_due_screens, enqueue_pacs_screen, screen_connection
from jobs.params import JobParamsError
from jobs.worker import Worker
from tests.admin_helpers import fast_settings
from tests.db_fixtures import TEST_PASSWORD
from tests.orthanc_fixtures import OrthancServer, PlantedInstance, dicom_from_png, sample_views, stow
from webapp.auth import SessionUser
from webapp.formatting import plain

TODAY = dt.date.today()
YESTERDAY = (TODAY - dt.timedelta(days=1)).isoformat()


@pytest.fixture(autouse=True)
def own_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("CHEXNET_HOME", str(home))
    return home


def random_model(folder: Path, name: str, seed: int) -> Predictor:
    torch.manual_seed(seed)
    artifact = save_artifact(create_model(), folder / name, new_card(name), half=False)
    return Predictor(artifact, backend="torch", device="cpu")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Predictor, Predictor]:
    """Two random-init versions: the second stands for a newly registered model."""
    folder = tmp_path_factory.mktemp("screen-models")
    return random_model(folder, "screen-random", 0), random_model(folder, "screen-random-2", 1)


def store_studies(
    server: OrthancServer, sample_dir: Path, n: int, *, start: int, date: dt.date = TODAY
) -> list[PlantedInstance]:
    """`n` one-instance CR/DX studies of sample PNGs (from `start`), dated `date` at noon."""
    views = sample_views(sample_dir)
    datasets, planted = [], []
    for number, png in enumerate(
        sorted((sample_dir / "images").glob("*.png"))[start : start + n], start=start
    ):
        ds, info = dicom_from_png(png, number=number, view=views[png.name], modality=("CR", "DX")[number % 2])
        ds.StudyDate, ds.StudyTime = date.strftime("%Y%m%d"), "120000"
        datasets.append(ds)
        planted.append(info)
    stow(server, datasets)
    return planted


def add_connection(engine: Engine, server: OrthancServer, *, write_back: bool) -> int:
    with session_scope(engine) as session:
        return pacs.create_connection(
            session, "Screened PACS", server.dicomweb_url, auth="basic", username=server.user,
            secret=server.password, write_back=write_back,
        ).id  # fmt: skip


def register(engine: Engine, predictor: Predictor) -> int:
    with session_scope(engine) as session:
        version_id = register_existing_model(session, predictor.artifact.path).id
        promote_version(session, version_id)
    return version_id


def results_in_pacs(server: OrthancServer, study_uid: str) -> list:
    """The SRs the app wrote into a study, read back (each with its OT capture counted alongside)."""
    session_settings = PacsSettings(server.dicomweb_url, "basic", server.user, server.password)
    client = PacsClient(session_settings)._client  # dicomweb-client's own, to read raw instances back
    series = client.search_for_series(study_uid, fields=["Modality"])
    modalities = [s["00080060"]["Value"][0] for s in series]
    reports = []
    for ref in client.search_for_instances(study_uid, search_filters={"Modality": "SR"}):
        study, series, sop = (ref[tag]["Value"][0] for tag in ("0020000D", "0020000E", "00080018"))
        reports.append(read_findings_sr(client.retrieve_instance(study, series, sop)))
    assert modalities.count("OT") == len(reports)  # a heat map with each report
    return reports


def last_message(engine: Engine, job_id: int) -> str:
    with session_scope(engine, read_only=True) as session:
        job = get_job(session, job_id)
        assert (job.kind, job.status) == (JOB_PACS_SCREEN, "succeeded"), job.error
        return job.progress["message"]


def screen_now(engine: Engine, worker: Worker, connection_id: int) -> str:
    with session_scope(engine) as session:
        job_id = enqueue_pacs_screen(session, connection_id).id
    assert worker.run_once() == job_id
    return last_message(engine, job_id)


def predictions(engine: Engine, version_id: int) -> dict[str, list[float]]:
    """{file path: probabilities} of the version's stored predictions."""
    with session_scope(engine, read_only=True) as session:
        rows = session.execute(
            select(Image.path, Prediction.probabilities)
            .join(Prediction, Prediction.image_id == Image.id)
            .where(Prediction.model_version_id == version_id)
        )
        return {path: probabilities for path, probabilities in rows}


def test_polls_screen_each_new_study_once_per_model_version(
    sqlite_engine: Engine, orthanc: OrthancServer, sample_dir: Path, models: tuple[Predictor, Predictor]
) -> None:
    first, second = models
    today = store_studies(orthanc, sample_dir, 2, start=0)
    [old] = store_studies(orthanc, sample_dir, 1, start=2, date=TODAY - dt.timedelta(days=30))
    connection_id = add_connection(sqlite_engine, orthanc, write_back=True)
    v1 = register(sqlite_engine, first)
    with session_scope(sqlite_engine) as session:
        screening.set_screening(session, connection_id, 60)
    worker = Worker(sqlite_engine, settings=fast_settings())

    # The first poll: the worker queues it (due) and runs it; from the day before on, so the old one is out.
    job_id = worker.run_once()
    assert job_id is not None
    assert last_message(sqlite_engine, job_id) == (
        f"Screened 2 new studies from {YESTERDAY} on with screen-random: 2 images predicted, 2 written back "
        "(2 instances imported, 0 left out; 0 studies screened before)."
    )
    stored = predictions(sqlite_engine, v1)
    assert len(stored) == 2
    for path, probabilities in stored.items():  # the app's predictions table, as the predict job stores them
        data = Path(path).read_bytes()
        expected = first.predict_one(read_xray(data).pixels, file_bytes=data).probabilities
        assert probabilities == pytest.approx([expected[f] for f in FINDINGS], abs=1e-6)
    for instance in today:
        [report] = results_in_pacs(orthanc, instance.study_uid)
        assert report["image"] == instance.sop_uid
        assert report["model"]["version"] == f"screen-random (#{v1})"
    assert results_in_pacs(orthanc, old.study_uid) == []
    with session_scope(sqlite_engine, read_only=True) as session:
        assert session.query(Image).count() == 2  # the old study was not even imported
        assert screening.screening_state(session, connection_id).screen_from == TODAY.strftime("%Y%m%d")
        last = screening.last_screen(session, connection_id)
    assert (last.job_id, last.status) == (job_id, "succeeded") and last.summary.startswith("Screened 2 new")
    assert worker.run_once() is None  # not due again for a minute: nothing queued

    # A new study: only it is screened; the window now starts today. (Left out: the SRs and captures the
    # first poll wrote, each looked at once, from what the search says, without fetching it.)
    [new] = store_studies(orthanc, sample_dir, 1, start=3)
    assert screen_now(sqlite_engine, worker, connection_id) == (
        f"Screened 1 new study from {TODAY.isoformat()} on with screen-random: 1 image predicted, 1 written "
        "back (1 instance imported, 4 left out; 2 studies screened before)."
    )
    assert len(predictions(sqlite_engine, v1)) == 3
    assert [len(results_in_pacs(orthanc, i.study_uid)) for i in [*today, new]] == [1, 1, 1]

    # Again: nothing to do (and nothing imported: a quiet poll is one question to the PACS).
    assert screen_now(sqlite_engine, worker, connection_id) == (
        f"Screened 0 new studies from {TODAY.isoformat()} on with screen-random: 0 images predicted, 0 "
        "written back (0 instances imported, 0 left out; 3 studies screened before)."
    )
    assert [len(results_in_pacs(orthanc, i.study_uid)) for i in [*today, new]] == [1, 1, 1]

    # A new model version screens them again, with its own results.
    v2 = register(sqlite_engine, second)
    assert screen_now(sqlite_engine, worker, connection_id) == (
        f"Screened 3 new studies from {TODAY.isoformat()} on with screen-random-2: 3 images predicted, 3 "
        "written back (0 instances imported, 2 left out; 0 studies screened before)."
    )
    assert len(predictions(sqlite_engine, v2)) == 3 and len(predictions(sqlite_engine, v1)) == 3
    for instance in [*today, new]:
        versions = sorted(r["model"]["version"] for r in results_in_pacs(orthanc, instance.study_uid))
        assert versions == [f"screen-random (#{v1})", f"screen-random-2 (#{v2})"]
    with session_scope(sqlite_engine, read_only=True) as session:
        rows = session.scalars(select(PacsScreenedStudy)).all()
        assert sorted((r.model_version_id, r.images, r.written_back) for r in rows) == sorted(
            [(v1, 1, 1)] * 3 + [(v2, 1, 1)] * 3
        )
        assert session.query(Image).count() == 3
        assert session.query(PacsInstance).filter(PacsInstance.results_written_at.is_not(None)).count() == 3


def test_a_cancelled_poll_keeps_what_it_screened_and_the_next_one_goes_on(
    sqlite_engine: Engine, orthanc: OrthancServer, sample_dir: Path, models: tuple[Predictor, Predictor]
) -> None:
    """And with write-back off: predicted and stored, nothing sent to the PACS."""
    first, _ = models
    planted = store_studies(orthanc, sample_dir, 2, start=10)
    connection_id = add_connection(sqlite_engine, orthanc, write_back=False)
    version_id = register(sqlite_engine, first)
    steps: list[tuple[str, int, int]] = []
    with pytest.raises(Cancelled) as cancelled:
        screen_connection(
            sqlite_engine, connection_id, lambda: first, version_id, "screen-random",
            progress=lambda *step: steps.append(step), should_stop=lambda: ("predict", 1, 2) in steps,
        )  # fmt: skip
    assert str(cancelled.value) == "Cancelled after screening 1 of 2 new studies; the next poll goes on."
    assert steps[0] == ("look", 1, 2) and ("import", 2, 2) in steps
    assert len(predictions(sqlite_engine, version_id)) == 1
    summary, write_back = screen_connection(sqlite_engine, connection_id, lambda: first, version_id, "x")
    assert not write_back
    assert (summary.screened, summary.seen_before, summary.images, summary.written_back) == (1, 1, 1, 0)
    assert summary.sentence("x", write_back).endswith(
        "1 image predicted, write-back is off (0 instances imported, 0 left out; 1 study screened before)."
    )
    assert len(predictions(sqlite_engine, version_id)) == 2
    assert [results_in_pacs(orthanc, p.study_uid) for p in planted] == [[], []]


def test_the_worker_queues_a_poll_when_due_and_never_two_at_once(engine: Engine) -> None:
    with session_scope(engine) as session:
        on = pacs.create_connection(session, "On", "http://127.0.0.1:9/dicom-web").id
        pacs.create_connection(session, "Off", "http://127.0.0.1:9/dicom-web")
    assert enqueue_due_screens(engine) == []  # off by default
    with session_scope(engine) as session:
        screening.set_screening(session, on, 120)
        with pytest.raises(screening.ScreeningSettingError, match="every 1 minute to 7 days"):
            screening.set_screening(session, on, 30)
    [job_id] = enqueue_due_screens(engine)
    with session_scope(engine, read_only=True) as session:
        job = get_job(session, job_id)
        assert (job.kind, job.status) == (JOB_PACS_SCREEN, "queued")
        assert job.params == {"connection_id": on, "version_id": None}
    assert enqueue_due_screens(engine) == []  # not due yet
    later = utcnow() + dt.timedelta(seconds=121)
    assert enqueue_due_screens(engine, now=later) == []  # due, but its poll is still queued
    with session_scope(engine) as session:
        with pytest.raises(JobParamsError) as refused:
            enqueue_pacs_screen(session, on)
        assert str(refused.value) == (
            f"A screening of the PACS connection 'On' is already queued or running (job #{job_id})."
        )
        request_cancel(session, job_id)
    with session_scope(engine, read_only=True) as session:  # two workers look at once ...
        [(connection_id, every_s, seen)] = screening.due_connections(session, later)
    [next_id] = enqueue_due_screens(engine, now=later)  # ... the first queues the poll ...
    with session_scope(engine) as session:  # ... and the second, with what it saw, may not
        assert not screening.take_turn(session, connection_id, seen_job_id=seen, every_s=every_s, now=later)
    assert enqueue_due_screens(engine, now=later) == []
    # The worker runs it like any job; without an active model it fails with that sentence, shown as the
    # connection's last screening.
    assert Worker(engine, settings=fast_settings()).run_once() == next_id
    with session_scope(engine, read_only=True) as session:
        last = screening.last_screen(session, on)
        assert session.query(TrainingJob).filter(TrainingJob.kind == JOB_PACS_SCREEN).count() == 2
    assert (last.job_id, last.status, last.summary) == (
        next_id, "failed", "No model version is active; promote one first."
    )  # fmt: skip


def test_admin_turns_screening_on_and_screens_now_from_the_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fast_password_hashing
) -> None:
    url = f"sqlite:///{tmp_path / 'studio.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    engine = get_engine(url)
    with session_scope(engine) as session:
        admin_id = accounts.create_user(session, "boss", TEST_PASSWORD, role="admin").id
        connection_id = pacs.create_connection(session, "Ward PACS", "http://127.0.0.1:9/dicom-web").id
    try:
        at = AppTest.from_file(str(REPO_ROOT / "webapp" / "views" / "admin.py"), default_timeout=60)
        at.session_state["user"] = SessionUser(admin_id, "boss", "admin")
        at.run()
        assert not at.exception, at.exception
        assert at.number_input(key=f"pacs_screen_every_{connection_id}").disabled  # off by default
        at.toggle(key=f"pacs_screen_{connection_id}").set_value(True)
        at.run()
        at.number_input(key=f"pacs_screen_every_{connection_id}").set_value(5)
        at.run()
        assert not at.exception, at.exception
        with session_scope(engine, read_only=True) as session:
            assert screening.screening_state(session, connection_id).every_s == 300
        next(b for b in at.button if b.label == "Screen now").click()
        at.run()
        assert not at.exception and not at.error
        with session_scope(engine, read_only=True) as session:
            [job] = session.scalars(select(TrainingJob).where(TrainingJob.kind == JOB_PACS_SCREEN)).all()
        assert any(
            s.value.endswith(f"Job #{job.id} queued: screen the PACS for new studies.") for s in at.success
        )
        assert any(c.value.startswith(plain(f"Last screening: job #{job.id}, queued")) for c in at.caption)
        next(b for b in at.button if b.label == "Screen now").click()  # one at a time
        at.run()
        refused = "A screening of the PACS connection 'Ward PACS' is already queued or running"
        assert [e.value for e in at.error] == [plain(f"{refused} (job #{job.id}).")]
    finally:
        dispose_engine(url)
