"""The training worker end to end on the CPU: real jobs, real training, a real database (SQLite).

Data: the trainer tests' synthetic ChestX-ray14 folder (96-px images, 48-px crops), so a fine-tune of
a tiny-input DenseNet takes seconds.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from core.data.cache import ImageCache
from core.imaging.reader import read_xray_file
from core.inference.artifact import read_artifact
from core.inference.predictor import Predictor
from core.labels import FINDINGS
from core.paths import REPO_ROOT, active_model_dir, cache_dir
from core.training import STATE_FILE, SettingsError, TrainSettings
from db import accounts
from db.__main__ import main as db_main
from db.engine import dispose_engine, session_scope
from db.jobs import enqueue_job, get_job, request_cancel
from db.models import Image, ModelVersion, Prediction
from db.registry import (
    get_version,
    list_versions,
    promote_version,
    register_existing_model,
    rollback_version,
)
from db.reviews import save_review
from jobs.params import JOB_FINE_TUNE, FineTuneParams, JobParamsError
from jobs.predict import registry_cache_folder
from jobs.progress import JobProgress
from jobs.queue import can_resume, enqueue_fine_tune, enqueue_predict, resume_job
from jobs.serving import ServingPreparer
from jobs.worker import Worker
from tests.admin_helpers import (
    ONE_THREAD_ENV,
    fast_settings,
    make_studio,
    synthetic_dataset,
    tiny_model,
)


@pytest.fixture(scope="module")
def synthetic_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_dataset(tmp_path_factory.mktemp("cxr14"))


@pytest.fixture
def studio(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, synthetic_data: Path, fast_password_hashing):
    made = make_studio(tmp_path, monkeypatch, synthetic_data)
    yield made
    dispose_engine(made.url)


def _enqueue(engine: Engine, *, name: str = "", label_source: str = "nlp", **settings) -> int:
    with session_scope(engine) as session:
        base_id = session.scalar(select(ModelVersion.id).where(ModelVersion.name == "tiny-base"))
        chosen = TrainSettings(epochs=1, batch_size=16, lr=1e-3, val_fraction=0.25).replace(**settings)
        params = FineTuneParams(
            name=name, base_version_id=base_id, label_source=label_source, settings=chosen
        )
        return enqueue_fine_tune(session, params).id


def _job(engine: Engine, job_id: int):
    with session_scope(engine, read_only=True) as session:
        return get_job(session, job_id)


def _progress(engine: Engine, job_id: int) -> JobProgress:
    return JobProgress.from_dict(_job(engine, job_id).progress)


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"Timed out waiting for {what}.")
        time.sleep(0.1)


def test_fine_tune_with_reviewed_labels_registers_an_evaluated_version(studio) -> None:
    engine = studio.engine
    # A clinician corrects one test image: its effective label now differs from the NLP one.
    with session_scope(engine) as session:
        test_image = session.scalar(select(Image).where(Image.split == "test").order_by(Image.id))
        reader = accounts.get_user(session, "reader")
        save_review(
            session,
            test_image.id,
            reader,
            {"Cardiomegaly": True, "Effusion": True},
            False,
            False,
            "bar and fluid",
            None,
        )
    job_id = _enqueue(engine, label_source="effective", epochs=2, class_weighting=True, name="tuned-1")

    worker = Worker(engine, settings=fast_settings())
    assert worker.run_once() == job_id
    job = _job(engine, job_id)
    assert job.status == "succeeded", job.error
    assert job.finished_at is not None and job.error is None

    # Live progress as the page shows it: steps, losses, validation AUROC per epoch, device.
    progress = JobProgress.from_dict(job.progress)
    assert progress.epochs == 2 and progress.fraction == 1.0 and progress.stage == "succeeded"
    assert len(progress.loss_history) >= 2 and all(len(point) == 2 for point in progress.loss_history)
    assert [e.epoch for e in progress.epochs_done] == [1, 2]
    assert set(progress.epochs_done[0].val_auroc) == set(FINDINGS)
    assert "CPU" in progress.device
    assert progress.result_version == "tuned-1"
    assert progress.message == "Registered version 'tuned-1'."

    with session_scope(engine, read_only=True) as session:
        version = get_version(session, "tuned-1")
        assert job.result_model_version_id == version.id
        assert version.parent_id == studio.base_id
        assert not version.is_active  # registering never promotes
        snapshot = version.label_snapshot
        assert snapshot["source"] == "effective" and snapshot["n_reviewed"] == 1
        assert snapshot["n_images"] == 56 and len(snapshot["sha256"]) == 64
        # The version's hyper-parameters are the job's settings plus the recipe the card records.
        hyperparams = version.hyperparams
        assert hyperparams["epochs"] == 2 and hyperparams["class_weighting"] is True
        assert hyperparams["val_fraction"] == 0.25 and hyperparams["lr"] == pytest.approx(1e-3)
        assert hyperparams["job_id"] == job_id and hyperparams["image_size"] == 48  # the base model's crop
        metrics = version.metrics
    folder = Path(version.path)
    assert folder == studio.home / "models" / "tuned-1"
    assert not (folder.parent / "tuned-1.work").exists()  # the work folder goes once registered
    # The table the run trained on is kept with the model and matches the recorded hash.
    import hashlib

    assert hashlib.sha256((folder / "training_labels.csv").read_bytes()).hexdigest() == snapshot["sha256"]

    # Dashboards: ROC/PR curves and CIs on test and validation, against NLP and reviewed labels.
    evaluations = metrics["evaluations"]
    assert set(evaluations) == {"nlp", "reviewed"}
    test_nlp, test_reviewed = evaluations["nlp"]["test"], evaluations["reviewed"]["test"]
    assert test_nlp["n_images"] == 8 and test_nlp["split"] == "test"
    assert test_reviewed["n_reviewed_in_split"] == 1
    # The review made Cardiomegaly positive on one test image: a class undefined under NLP labels
    # (all 8 test images are Atelectasis only) gets a curve under the reviewed labels.
    assert test_nlp["roc"]["Cardiomegaly"] is None
    assert test_reviewed["roc"]["Cardiomegaly"] is not None
    assert test_reviewed["support"]["Cardiomegaly"] == 1
    assert set(evaluations["nlp"]["val"]["auroc"]) == set(FINDINGS)
    assert metrics["training"]["mean_auroc"] == pytest.approx(progress.best_val_auroc)
    # The card carries the test figure too, so the Predict page shows a measured AUROC.
    card = read_artifact(folder).card
    assert card["metrics"]["test"]["n_images"] == 8
    assert card["name"] == "tuned-1"


def test_failed_job_records_its_error_and_the_worker_carries_on(studio) -> None:
    engine = studio.engine
    with session_scope(engine) as session:
        bad = FineTuneParams(name="broken", data_dir="/no/such/folder", settings=TrainSettings(epochs=1))
        bad_id = enqueue_job(session, bad.to_dict(), kind=JOB_FINE_TUNE).id
        old_shape = enqueue_job(session, {"name": "flat", "epochs": 1}, kind=JOB_FINE_TUNE).id
        nonsense = enqueue_job(session, {}, kind="paint").id
        predict = enqueue_predict(session).id
    worker = Worker(engine, settings=fast_settings())
    assert worker.run_once() == bad_id
    failed = _job(engine, bad_id)
    assert failed.status == "failed"
    assert "/no/such/folder" in failed.error and "not a ChestX-ray14 folder" in failed.error
    assert not failed.error.startswith("Unexpected")  # a UserError: its own sentence
    assert worker.run_once() == old_shape
    assert _job(engine, old_shape).error == "Unknown fine-tune parameter(s): epochs."
    assert worker.run_once() == nonsense
    assert "Unknown job kind 'paint'" in _job(engine, nonsense).error

    assert worker.run_once() == predict
    job = _job(engine, predict)
    assert job.status == "succeeded", job.error
    with session_scope(engine, read_only=True) as session:
        stored = session.scalars(
            select(Prediction).where(Prediction.model_version_id == studio.base_id)
        ).all()
        n_images = len(session.scalars(select(Image.id)).all())
    assert len(stored) == n_images == 56
    assert all(
        len(p.probabilities) == 14 and 0 <= min(p.probabilities) <= max(p.probabilities) <= 1 for p in stored
    )
    assert worker.run_once() is None  # queue empty


def test_enqueue_refuses_bad_parameters_with_a_sentence(studio) -> None:
    engine = studio.engine
    params = FineTuneParams(base_version_id=studio.base_id, settings=TrainSettings(epochs=1))
    with pytest.raises(SettingsError, match="epochs must be between 1 and 500, not 0"):
        FineTuneParams.from_dict({**params.to_dict(), "settings": {"epochs": 0}})
    with pytest.raises(JobParamsError, match="not a usable version name"):
        FineTuneParams(name="../escape")
    with pytest.raises(JobParamsError, match="Unknown label source"):
        FineTuneParams(label_source="gossip")
    with session_scope(engine) as session:
        with pytest.raises(JobParamsError, match="already exists"):
            enqueue_fine_tune(session, dataclasses.replace(params, name="tiny-base"))
        with pytest.raises(JobParamsError, match="not a ChestX-ray14 folder"):
            enqueue_fine_tune(session, dataclasses.replace(params, data_dir=studio.home))
        first = enqueue_fine_tune(session, params)
        second = enqueue_fine_tune(session, params)
        assert first.params["name"] == "tiny-base-ft1" and second.params["name"] == "tiny-base-ft2"
        with pytest.raises(JobParamsError, match="Job #1 is already training"):
            enqueue_fine_tune(session, dataclasses.replace(params, name="tiny-base-ft1"))
    # What the row holds is the contract itself: read back, it is the params that were queued.
    stored = FineTuneParams.from_dict(first.params)
    assert stored == dataclasses.replace(params, name="tiny-base-ft1", data_dir=studio.data)


def test_cancel_stops_between_steps_and_registers_nothing(studio) -> None:
    engine = studio.engine
    job_id = _enqueue(engine, epochs=50, name="never")
    worker = Worker(engine, settings=fast_settings())

    def cancel_once_training() -> None:
        _wait_for(lambda: _progress(engine, job_id).stage == "train", 120, "training to start")
        with session_scope(engine) as session:
            request_cancel(session, job_id)

    import threading

    canceller = threading.Thread(target=cancel_once_training)
    canceller.start()
    assert worker.run_once() == job_id
    canceller.join()
    job = _job(engine, job_id)
    assert job.status == "cancelled" and job.cancel_requested
    progress = JobProgress.from_dict(job.progress)
    assert progress.epoch < 50 and progress.stage == "cancelled"
    assert "cancelled" in progress.message and job.error is None
    with session_scope(engine, read_only=True) as session:
        assert [v.name for v in list_versions(session)] == ["tiny-base"]


def test_dead_worker_is_interrupted_and_the_job_resumes_from_its_saved_epoch(studio, tmp_path) -> None:
    engine = studio.engine
    job_id = _enqueue(engine, epochs=3, name="phoenix")
    # A real worker process, killed without warning once it has finished epoch 1.
    env = {
        **os.environ,
        **ONE_THREAD_ENV,
        "PYTHONPATH": str(REPO_ROOT),
        "CHEXNET_HOME": str(studio.home),
        "DATABASE_URL": studio.url,
    }
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jobs",
                "--once",
                "--device",
                "cpu",
                "--heartbeat",
                "0.2",
                "--backend",
                "torch",
                "--n-boot",
                "20",
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    state_file = studio.home / "models" / "phoenix.work" / STATE_FILE
    try:
        _wait_for(
            lambda: process.poll() is not None or len(_progress(engine, job_id).epochs_done) >= 1,
            180,
            "the first epoch",
        )
        assert process.poll() is None, log_path.read_text()[-3000:]
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert state_file.is_file()
    assert _job(engine, job_id).status == "running"  # nobody knows yet

    # The next worker notices the stale heartbeat and marks the job interrupted.
    time.sleep(1.2)
    worker = Worker(engine, settings=fast_settings(stale_after_s=1.0))
    assert worker.run_once() is None
    interrupted = _job(engine, job_id)
    assert interrupted.status == "interrupted" and "heartbeat" in interrupted.error
    assert can_resume(interrupted)

    with session_scope(engine) as session:
        resumed_id = resume_job(session, job_id).id
        with pytest.raises(JobParamsError, match="already continuing"):
            resume_job(session, job_id)
    assert worker.run_once() == resumed_id
    resumed = _job(engine, resumed_id)
    assert resumed.status == "succeeded", resumed.error
    assert resumed.params["resume"] is True and resumed.params["resumed_from"] == job_id
    progress = JobProgress.from_dict(resumed.progress)
    saved_epoch = progress.resumed_after_epoch
    assert saved_epoch is not None and saved_epoch >= 1
    assert any(f"Resuming after epoch {saved_epoch}" in m for m in progress.messages)
    assert [e.epoch for e in progress.epochs_done] == [1, 2, 3]
    card = read_artifact(studio.home / "models" / "phoenix").card
    assert [h["epoch"] for h in card["history"]] == [1, 2, 3]
    assert card["provenance"]["epochs"] == 3


def test_multi_process_fine_tune_runs_under_torchrun(studio) -> None:
    """CHEXNET_WORKER_GPUS > 1 makes the worker run torchrun; two CPU (gloo) processes stand in for GPUs.

    The one 2-process training test: rank 0 alone validates, reports and writes the model folder."""
    job_id = _enqueue(studio.engine, epochs=2, name="ddp")
    assert Worker(studio.engine, settings=fast_settings(nproc=2)).run_once() == job_id
    job = _job(studio.engine, job_id)
    assert job.status == "succeeded", job.error
    progress = JobProgress.from_dict(job.progress)
    assert progress.device.endswith("x 2 processes")  # as rank 0 reported it
    assert [e.epoch for e in progress.epochs_done] == [1, 2] and progress.loss_history
    card = read_artifact(studio.home / "models" / "ddp").card
    assert card["provenance"]["device"].endswith("x 2 processes")
    assert [h["epoch"] for h in card["history"]] == [1, 2]  # one history, not one per rank
    assert not (studio.home / "models" / "ddp.work").exists()  # rank 0 removed the work folder
    with session_scope(studio.engine, read_only=True) as session:
        assert get_version(session, "ddp").metrics["evaluations"]["nlp"]["test"]["n_images"] == 8


def test_promote_and_roll_back_move_the_active_model_pointer(studio, tmp_path, capsys) -> None:
    engine = studio.engine
    other = tiny_model(tmp_path / "models", "tiny-other", seed=1)
    # A model made outside the app (e.g. by torchrun from the CLI) joins the registry from the command line.
    env = {**os.environ, **ONE_THREAD_ENV, "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "db", "register", str(other)]
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Registered 'tiny-other'" in done.stdout
    # The same command again (in this process: same code, no second interpreter start) is refused.
    assert db_main(["register", str(other)]) == 1
    assert capsys.readouterr().err.strip() == "error: A model version named 'tiny-other' already exists."
    with session_scope(engine) as session:
        promote_version(session, "tiny-other")
    assert active_model_dir() == other.resolve()
    with session_scope(engine) as session:
        back = rollback_version(session)
        assert back.name == "tiny-base" and back.is_active
    assert active_model_dir().name == "tiny-base"
    with session_scope(engine, read_only=True) as session:
        assert [v.name for v in list_versions(session) if v.is_active] == ["tiny-base"]


def _stored(engine: Engine, version_id: int) -> dict[int, list[float]]:
    with session_scope(engine, read_only=True) as session:
        rows = session.execute(
            select(Prediction.image_id, Prediction.probabilities).where(
                Prediction.model_version_id == version_id
            )
        )
        return {image_id: list(p) for image_id, p in rows}


def test_predict_job_reads_the_cache_and_shards_under_torchrun_with_the_same_results(studio) -> None:
    """The predict job decodes each file once into the image cache; one process and two torchrun ranks
    store the probabilities the predictor gives on the original files, and a rerun adds no rows."""
    engine = studio.engine
    with session_scope(engine) as session:
        first = enqueue_predict(session).id
    assert Worker(engine, settings=fast_settings()).run_once() == first
    job = _job(engine, first)
    assert job.status == "succeeded", job.error
    message = JobProgress.from_dict(job.progress).message
    assert re.search(
        r"Stored 56 predictions of 'tiny-base' \(0 unreadable\): [\d.]+ images/s on 1 process", message
    )
    one_process = _stored(engine, studio.base_id)
    assert len(one_process) == 56
    with session_scope(engine, read_only=True) as session:
        version = get_version(session, studio.base_id)
        files = dict(session.execute(select(Image.id, Image.path)).all())
    predictor = Predictor.from_path(version.path, backend="torch", device="cpu")
    assert len(ImageCache.open(registry_cache_folder(predictor.resize))) == 56
    some = sorted(files)[:6]
    direct = predictor.predict([read_xray_file(files[i]).pixels for i in some], check_ood=False)
    for image_id, prediction in zip(some, direct, strict=True):
        expected = [prediction.probabilities[f] for f in FINDINGS]
        assert one_process[image_id] == pytest.approx(expected, abs=1e-5)

    with session_scope(engine) as session:
        second = enqueue_predict(session).id
    assert Worker(engine, settings=fast_settings(nproc=2)).run_once() == second
    job = _job(engine, second)
    assert job.status == "succeeded", job.error
    assert "on 2 processes" in JobProgress.from_dict(job.progress).message
    two_processes = _stored(engine, studio.base_id)
    assert two_processes.keys() == one_process.keys()  # replaced, not duplicated
    for image_id, values in one_process.items():
        assert two_processes[image_id] == pytest.approx(values, abs=1e-5)


def test_an_idle_worker_readies_each_newly_served_model_for_openvino(studio, tmp_path, monkeypatch) -> None:
    # The web app would otherwise convert it on its first page (importing torch into the web process).
    monkeypatch.setenv("CHEXNET_INFERENCE_BACKEND", "auto")
    compiled = cache_dir() / "openvino"
    worker = Worker(studio.engine, worker_id="serving-test", settings=fast_settings())
    stop = threading.Event()
    loop = threading.Thread(target=worker.run_forever, args=(stop,), daemon=True)
    loop.start()
    try:
        _wait_for(lambda: any(compiled.glob("*.compiled")), 120, "the active model's OpenVINO cache")
    finally:
        stop.set()
        loop.join(timeout=60)
    served = Predictor(read_artifact(active_model_dir()), backend="openvino", device="cpu")
    assert served.backend_info["compiled_from"] == "cache"
    preparer = ServingPreparer(studio.engine)
    assert preparer.prepare_if_new()  # a new worker process prepares once (from the cache: fast)
    assert not preparer.prepare_if_new()  # and not again while the served model is the same
    other = tiny_model(tmp_path / "models", "tiny-other", seed=1)
    with session_scope(studio.engine) as session:
        register_existing_model(session, other)
        promote_version(session, "tiny-other")
    assert preparer.prepare_if_new()  # promoted: the new one is readied
    before = set(compiled.iterdir())
    monkeypatch.setenv("CHEXNET_INFERENCE_BACKEND", "torch")
    with session_scope(studio.engine) as session:
        rollback_version(session)
    assert not preparer.prepare_if_new()  # a web app serving with PyTorch needs nothing
    assert set(compiled.iterdir()) == before
