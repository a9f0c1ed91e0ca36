"""Training-job queue in the database, for a worker process to claim and run.

Life of a job: queued -> running (claimed by one worker, which heartbeats) -> succeeded | failed |
cancelled; a running job whose worker stops heartbeating is marked interrupted by
`mark_stale_jobs_interrupted`. Cancelling a queued job cancels it at once; cancelling a running job
sets `cancel_requested`, which `heartbeat` / `update_progress` return so the worker can stop and call
`finish_job(..., "cancelled")`.

Rows only: what a job kind means and how it runs is the `jobs` package's business.

Claiming is atomic: on PostgreSQL `SELECT ... FOR UPDATE SKIP LOCKED` (concurrent claimers each get a
different job), on SQLite a compare-and-set `UPDATE ... WHERE id = :id AND status = 'queued'` inside a
write transaction. Each function runs in the caller's session; commit right after claiming.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db.errors import DbUserError, NotFoundError
from db.models import JOB_FINISHED_STATUSES, TrainingJob, User, utcnow

_CLAIM_ATTEMPTS = 5


class JobLostError(DbUserError):
    """The worker no longer owns the job (it was marked interrupted, finished or claimed elsewhere)."""


def enqueue_job(
    session: Session, params: dict[str, Any], *, kind: str = "fine_tune", created_by: User | None = None
) -> TrainingJob:
    job = TrainingJob(
        kind=kind,
        status="queued",
        params=params,
        created_by_id=created_by.id if created_by is not None else None,
    )
    session.add(job)
    session.flush()
    return job


def get_job(session: Session, job_id: int) -> TrainingJob:
    job = session.get(TrainingJob, job_id, populate_existing=True)
    if job is None:
        raise NotFoundError(f"There is no training job with id {job_id}.")
    return job


def list_jobs(session: Session, *, status: str | None = None, limit: int = 100) -> list[TrainingJob]:
    """Newest first."""
    statement = (
        select(TrainingJob).order_by(TrainingJob.created_at.desc(), TrainingJob.id.desc()).limit(limit)
    )
    if status is not None:
        statement = statement.where(TrainingJob.status == status)
    return list(session.scalars(statement))


def active_jobs(session: Session, *, kind: str | None = None) -> list[TrainingJob]:
    """Queued and running jobs (of `kind`), oldest first."""
    statement = select(TrainingJob).where(TrainingJob.status.in_(("queued", "running")))
    if kind is not None:
        statement = statement.where(TrainingJob.kind == kind)
    return list(session.scalars(statement.order_by(TrainingJob.created_at, TrainingJob.id)))


def current_job(session: Session) -> TrainingJob | None:
    """The running job, else the oldest queued one, else the newest job of any status."""
    for status, order in (("running", TrainingJob.started_at.desc()), ("queued", TrainingJob.created_at)):
        job = session.scalars(
            select(TrainingJob).where(TrainingJob.status == status).order_by(order).limit(1)
        ).first()
        if job is not None:
            return job
    return session.scalars(select(TrainingJob).order_by(TrainingJob.id.desc()).limit(1)).first()


def claim_next_job(session: Session, worker_id: str, *, kind: str | None = None) -> TrainingJob | None:
    """The oldest queued job, now running and owned by `worker_id`; None when nothing is queued."""
    oldest = select(TrainingJob.id).where(TrainingJob.status == "queued")
    if kind is not None:
        oldest = oldest.where(TrainingJob.kind == kind)
    oldest = oldest.order_by(TrainingJob.created_at, TrainingJob.id).limit(1)
    if session.get_bind().dialect.name == "postgresql":
        oldest = oldest.with_for_update(skip_locked=True)
    now = utcnow()
    for _ in range(_CLAIM_ATTEMPTS):
        job_id = session.scalar(oldest)
        if job_id is None:
            return None
        claimed = session.execute(
            update(TrainingJob)
            .where(TrainingJob.id == job_id, TrainingJob.status == "queued")
            .values(status="running", worker_id=worker_id, started_at=now, heartbeat_at=now)
            .execution_options(synchronize_session=False)
        )
        if claimed.rowcount == 1:
            return get_job(session, job_id)
    return None  # lost every race; the caller polls again


def _owned_update(session: Session, job_id: int, worker_id: str, **values: Any) -> TrainingJob:
    result = session.execute(
        update(TrainingJob)
        .where(TrainingJob.id == job_id, TrainingJob.status == "running", TrainingJob.worker_id == worker_id)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        job = session.get(TrainingJob, job_id, populate_existing=True)
        state = "does not exist" if job is None else f"is {job.status} (worker {job.worker_id})"
        raise JobLostError(f"Training job {job_id} is no longer running on worker {worker_id}: it {state}.")
    return get_job(session, job_id)


def heartbeat(session: Session, job_id: int, worker_id: str) -> bool:
    """Record that the worker is alive; returns True when cancellation was requested."""
    return _owned_update(session, job_id, worker_id, heartbeat_at=utcnow()).cancel_requested


def update_progress(session: Session, job_id: int, worker_id: str, progress: dict[str, Any]) -> bool:
    """Store the job's progress (also a heartbeat); returns True when cancellation was requested."""
    return _owned_update(
        session, job_id, worker_id, progress=progress, heartbeat_at=utcnow()
    ).cancel_requested


def request_cancel(session: Session, job_id: int) -> TrainingJob:
    """Cancel a queued job now, or ask the worker of a running one to stop; finished jobs stay as they are."""
    now = utcnow()
    session.execute(
        update(TrainingJob)
        .where(TrainingJob.id == job_id, TrainingJob.status == "queued")
        .values(status="cancelled", cancel_requested=True, finished_at=now)
        .execution_options(synchronize_session=False)
    )
    session.execute(
        update(TrainingJob)
        .where(TrainingJob.id == job_id, TrainingJob.status == "running")
        .values(cancel_requested=True)
        .execution_options(synchronize_session=False)
    )
    return get_job(session, job_id)


def finish_job(
    session: Session,
    job_id: int,
    worker_id: str,
    status: str,
    *,
    error: str | None = None,
    result_model_version_id: int | None = None,
    progress: dict[str, Any] | None = None,
) -> TrainingJob:
    """End a running job owned by `worker_id` as "succeeded", "failed" or "cancelled"."""
    if status not in ("succeeded", "failed", "cancelled"):
        raise ValueError(f"A job finishes as succeeded, failed or cancelled, not {status!r}.")
    values: dict[str, Any] = {"status": status, "finished_at": utcnow(), "error": error}
    if result_model_version_id is not None:
        values["result_model_version_id"] = result_model_version_id
    if progress is not None:
        values["progress"] = progress
    return _owned_update(session, job_id, worker_id, **values)


def interrupt_job(
    session: Session, job_id: int, worker_id: str, reason: str, *, progress: dict[str, Any] | None = None
) -> bool:
    """The worker of a running job stops (Ctrl-C, SIGTERM): "interrupted", resumable. False when the job
    was not running on `worker_id` any more."""
    values: dict[str, Any] = {"status": "interrupted", "finished_at": utcnow(), "error": reason}
    if progress is not None:
        values["progress"] = progress
    result = session.execute(
        update(TrainingJob)
        .where(TrainingJob.id == job_id, TrainingJob.status == "running", TrainingJob.worker_id == worker_id)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def mark_stale_jobs_interrupted(
    session: Session, timeout_s: float, *, now: dt.datetime | None = None
) -> list[int]:
    """Running jobs without a heartbeat for `timeout_s` become "interrupted"; returns their ids."""
    now = now or utcnow()
    cutoff = now - dt.timedelta(seconds=timeout_s)
    result = session.execute(
        update(TrainingJob)
        .where(TrainingJob.status == "running", TrainingJob.heartbeat_at < cutoff)
        .values(
            status="interrupted",
            finished_at=now,
            error=f"The worker stopped sending heartbeats for more than {timeout_s:g} s.",
        )
        .returning(TrainingJob.id)
        .execution_options(synchronize_session=False)
    )
    stale = sorted(result.scalars())
    return stale


def is_finished(job: TrainingJob) -> bool:
    return job.status in JOB_FINISHED_STATUSES
