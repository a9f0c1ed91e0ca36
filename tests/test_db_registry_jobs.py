"""Model registry (promotion, rollback, predictions) and the training-job queue."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import Engine, select, update
from sqlalchemy.exc import IntegrityError

from core.labels import FINDINGS
from db.engine import session_scope
from db.errors import DbUserError, NotFoundError
from db.jobs import (
    JobLostError,
    claim_next_job,
    enqueue_job,
    finish_job,
    get_job,
    heartbeat,
    list_jobs,
    mark_stale_jobs_interrupted,
    request_cancel,
    update_progress,
)
from db.models import ModelVersion, Prediction, TrainingJob, utcnow
from db.registry import (
    ModelNameTakenError,
    ModelUnavailableError,
    get_active_version,
    list_versions,
    predictions_for,
    promote,
    promote_version,
    promotion_history,
    register_model_version,
    retire,
    rollback,
    rollback_target,
    rollback_version,
    save_predictions,
    usable_model_dir,
)


def _active_names(engine: Engine) -> list[str]:
    with session_scope(engine, read_only=True) as session:
        return [v.name for v in session.scalars(select(ModelVersion).where(ModelVersion.is_active))]


def test_promote_keeps_exactly_one_active_and_rollback_returns(engine: Engine, make_user) -> None:
    admin = make_user("admin", role="admin")
    with session_scope(engine) as session:
        base = register_model_version(session, "base", "/m/base", hyperparams={"lr": 1e-3}, created_by=admin)
        tuned = register_model_version(
            session, "tuned", "/m/tuned", parent_id=base.id, label_snapshot={"rows": 10}, metrics={"auc": 0.8}
        )
        third = register_model_version(session, "third", "/m/third", parent_id=tuned.id)
        assert get_active_version(session) is None
        with pytest.raises(ModelNameTakenError, match="already exists"):
            register_model_version(session, "base", "/elsewhere")
        with pytest.raises(NotFoundError):
            register_model_version(session, "orphan", "/m/o", parent_id=9999)

    for name in ("base", "tuned", "third"):
        with session_scope(engine) as session:
            assert promote(session, name).is_active
        assert _active_names(engine) == [name]

    with session_scope(engine) as session:
        statuses = {v.name: v.status for v in list_versions(session)}
        assert statuses == {"base": "retired", "tuned": "retired", "third": "active"}
        assert [v.name for v in list_versions(session)] == ["third", "tuned", "base"]
        back = rollback(session)
        assert back.name == "tuned" and back.status == "active"
    assert _active_names(engine) == ["tuned"]
    with session_scope(engine) as session:
        assert rollback(session, "base").name == "base"
        active = get_active_version(session)
        assert active is not None and active.id == base.id and active.hyperparams == {"lr": 1e-3}
        with pytest.raises(DbUserError, match="active model"):
            retire(session, "base")
        assert retire(session, third.id).status == "retired"
    assert _active_names(engine) == ["base"]


def test_database_refuses_a_second_active_version(engine: Engine) -> None:
    with session_scope(engine) as session:
        a = register_model_version(session, "a", "/a")
        register_model_version(session, "b", "/b")
        promote(session, a.id)
    with pytest.raises(IntegrityError):
        with session_scope(engine) as session:
            session.execute(update(ModelVersion).where(ModelVersion.name == "b").values(is_active=True))


def test_predictions_are_stored_and_replaced(engine: Engine, make_images) -> None:
    images = make_images(2)
    with session_scope(engine) as session:
        version = register_model_version(session, "v", "/v")
        assert (
            save_predictions(
                session, version.id, {images[0]: [0.1] * 14, images[1]: {f: 0.5 for f in FINDINGS}}
            )
            == 2
        )
    with session_scope(engine) as session:
        save_predictions(session, version.id, {images[0]: [0.9] * 14})
        with pytest.raises(ValueError, match="14 probabilities"):
            save_predictions(session, version.id, {images[0]: [0.9] * 3})
    with session_scope(engine, read_only=True) as session:
        stored = predictions_for(session, version.id)
        assert stored == {images[0]: [0.9] * 14, images[1]: [0.5] * 14}
        assert predictions_for(session, version.id, [images[1]]) == {images[1]: [0.5] * 14}
        # Stored scored: the "model disagrees most" queue needs no separate refresh (labels: no finding).
        scores = dict(session.execute(select(Prediction.image_id, Prediction.disagreement)).all())
        assert scores == {images[0]: pytest.approx(0.9), images[1]: pytest.approx(0.5)}


def test_job_lifecycle(engine: Engine, make_user) -> None:
    admin = make_user("admin", role="admin")
    with session_scope(engine) as session:
        first = enqueue_job(session, {"epochs": 1}, created_by=admin)
        second = enqueue_job(session, {"epochs": 2})
        assert first.status == "queued" and first.params == {"epochs": 1} and first.created_by_id == admin.id
    with session_scope(engine) as session:
        job = claim_next_job(session, "w1")
        assert job is not None and job.id == first.id and job.status == "running"
        assert job.started_at is not None and job.heartbeat_at is not None
    with session_scope(engine) as session:
        assert heartbeat(session, first.id, "w1") is False
        assert update_progress(session, first.id, "w1", {"epoch": 1, "of": 1}) is False
        with pytest.raises(JobLostError):
            heartbeat(session, first.id, "someone-else")
    with session_scope(engine) as session:
        request_cancel(session, first.id)
        assert heartbeat(session, first.id, "w1") is True  # the worker learns it should stop
        done = finish_job(session, first.id, "w1", "cancelled")
        assert (
            done.status == "cancelled"
            and done.finished_at is not None
            and done.progress == {"epoch": 1, "of": 1}
        )
        with pytest.raises(JobLostError):
            finish_job(session, first.id, "w1", "succeeded")
        with pytest.raises(ValueError):
            finish_job(session, second.id, "w1", "exploded")
    with session_scope(engine) as session:
        cancelled = request_cancel(session, second.id)  # queued: cancelled at once
        assert cancelled.status == "cancelled"
        assert claim_next_job(session, "w1") is None
        assert [j.id for j in list_jobs(session)] == [second.id, first.id]
        assert [j.id for j in list_jobs(session, status="cancelled")] == [second.id, first.id]


def test_successful_job_records_its_model(engine: Engine) -> None:
    with session_scope(engine) as session:
        job = enqueue_job(session, {})
        claim_next_job(session, "w")
        version = register_model_version(session, "from-job", "/m/j")
        finished = finish_job(session, job.id, "w", "succeeded", result_model_version_id=version.id)
        assert (finished.status, finished.result_model_version_id, finished.error) == (
            "succeeded",
            version.id,
            None,
        )


def test_stale_running_jobs_become_interrupted(engine: Engine) -> None:
    with session_scope(engine) as session:
        alive, dead = enqueue_job(session, {}), enqueue_job(session, {})
        claim_next_job(session, "alive")
        claim_next_job(session, "dead")
        session.execute(
            update(TrainingJob)
            .where(TrainingJob.id == dead.id)
            .values(heartbeat_at=utcnow() - dt.timedelta(minutes=10))
        )
    with session_scope(engine) as session:
        assert mark_stale_jobs_interrupted(session, timeout_s=60) == [dead.id]
        assert mark_stale_jobs_interrupted(session, timeout_s=60) == []
    with session_scope(engine) as session:
        interrupted = get_job(session, dead.id)
        assert interrupted.status == "interrupted" and "heartbeats" in (interrupted.error or "")
        assert interrupted.heartbeat_at is not None and interrupted.heartbeat_at.tzinfo is not None
        assert get_job(session, alive.id).status == "running"
        with pytest.raises(JobLostError, match="interrupted"):
            heartbeat(session, dead.id, "dead")


def test_roll_back_walks_back_along_the_promotion_history(engine: Engine) -> None:
    """A -> B -> C, roll back -> B, roll back -> A, then there is nowhere to go (never a toggle)."""
    with session_scope(engine) as session:
        for name in "ABC":
            register_model_version(session, name, f"/m/{name}")
    for name in "ABC":
        with session_scope(engine) as session:
            promote(session, name)
    with session_scope(engine, read_only=True) as session:
        assert [v.name for v in promotion_history(session)] == ["A", "B", "C"]
        assert rollback_target(session).name == "B"
    for expected in ("B", "A"):
        with session_scope(engine) as session:
            assert rollback(session).name == expected
        assert _active_names(engine) == [expected]
    with session_scope(engine) as session:
        assert rollback_target(session) is None
        with pytest.raises(NotFoundError, match="No earlier active model version"):
            rollback(session)
    # Promoting again pushes on top of what is left: C over A; rolling back returns to A, not to B.
    with session_scope(engine) as session:
        promote(session, "C")
    with session_scope(engine) as session:
        assert rollback(session).name == "A"
        statuses = {v.name: (v.status, v.promoted_at is not None) for v in list_versions(session)}
    assert statuses == {"A": ("active", True), "B": ("retired", False), "C": ("retired", False)}


def test_the_active_pointer_follows_commits_and_unusable_folders_are_refused(
    engine: Engine, tmp_path, monkeypatch
) -> None:
    import shutil

    from core import paths
    from tests.admin_helpers import tiny_model

    monkeypatch.setenv("CHEXNET_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CHEXNET_MODEL", raising=False)
    folders = {name: tiny_model(tmp_path / "models", name, seed=i) for i, name in enumerate(("one", "two"))}
    with session_scope(engine) as session:
        for name, folder in folders.items():
            register_model_version(session, name, str(folder))
        promote_version(session, "one")
    assert paths.active_model_dir() == folders["one"].resolve()
    with pytest.raises(RuntimeError):
        with session_scope(engine) as session:
            promote_version(session, "two")
            raise RuntimeError("the transaction fails after the promotion")
    assert _active_names(engine) == ["one"] and paths.active_model_dir() == folders["one"].resolve()

    with session_scope(engine) as session:
        promote_version(session, "two")
    assert paths.active_model_dir() == folders["two"].resolve()
    shutil.rmtree(folders["one"])
    with pytest.raises(DbUserError, match="Cannot roll back to 'one': its model folder is unreadable"):
        with session_scope(engine) as session:
            rollback_version(session)
    assert _active_names(engine) == ["two"]
    shutil.rmtree(folders["two"])
    with session_scope(engine, read_only=True) as session:
        with pytest.raises(ModelUnavailableError, match="Model version 'two' is unavailable"):
            usable_model_dir(get_active_version(session))
    # The CLI's model: the promoted folder is gone, so it refuses rather than use the demo model.
    assert paths.active_model_dir() == folders["two"].resolve()
    with pytest.raises(paths.ActiveModelUnavailable, match="missing or is not a model folder"):
        paths.require_active_model_dir()


def test_a_predict_job_for_a_version_without_its_folder_fails_with_that_sentence(
    engine: Engine, tmp_path, monkeypatch
) -> None:
    from jobs.params import JOB_PREDICT, PredictParams
    from jobs.worker import Worker
    from tests.admin_helpers import fast_settings

    monkeypatch.setenv("CHEXNET_HOME", str(tmp_path / "home"))  # the worker's status file goes there
    with session_scope(engine) as session:
        version = register_model_version(session, "gone", str(tmp_path / "no-such-model"))
        job_id = enqueue_job(session, PredictParams(version_id=version.id).to_dict(), kind=JOB_PREDICT).id
    assert Worker(engine, settings=fast_settings()).run_once() == job_id
    with session_scope(engine, read_only=True) as session:
        job = get_job(session, job_id)
        assert job.status == "failed"
        assert job.error.startswith("Model version 'gone' is unavailable: ")
        assert job.error.endswith("Restore its folder or promote another version.")
        assert not session.scalars(select(Prediction)).all()
