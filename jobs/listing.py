"""Jobs as plain values for the pages (no ORM object outlives a Streamlit rerun)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from core.errors import UserError
from db.jobs import current_job, list_jobs
from db.models import TrainingJob
from db.registry import version_names
from jobs.params import JOB_FINE_TUNE, JOB_KIND_TEXT, FineTuneParams
from jobs.progress import JobProgress
from jobs.queue import can_resume


@dataclass(frozen=True)
class JobSummary:
    id: int
    kind: str
    status: str
    params: dict[str, Any]
    fine_tune: FineTuneParams | None  # the typed params of a (valid) fine-tune job
    progress: JobProgress
    error: str | None
    worker_id: str | None
    cancel_requested: bool
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    heartbeat_at: dt.datetime | None
    result_version: str | None
    resumable: bool

    @property
    def active(self) -> bool:
        return self.status in ("queued", "running")

    @property
    def kind_text(self) -> str:
        return JOB_KIND_TEXT.get(self.kind, self.kind)

    @property
    def version_name(self) -> str | None:
        """The version a fine-tune trains, or the one an evaluation or prediction uses."""
        return self.params.get("name") or self.progress.version

    @property
    def title(self) -> str:
        name = self.version_name
        if self.kind == JOB_FINE_TUNE and name:
            suffix = " (resumed)" if self.params.get("resume") else ""
            return f"Job #{self.id} · {self.kind_text} → {name}{suffix}"
        return f"Job #{self.id} · {self.kind_text}" + (f" · {name}" if name else "")

    @property
    def epochs(self) -> int | None:
        """Epochs asked for (a fine-tune)."""
        return self.fine_tune.settings.epochs if self.fine_tune is not None else None

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at or dt.datetime.now(dt.UTC)
        return (end - self.started_at).total_seconds()


def _fine_tune_params(job: TrainingJob) -> FineTuneParams | None:
    if job.kind != JOB_FINE_TUNE:
        return None
    try:
        return FineTuneParams.from_dict(job.params or {})
    except UserError:  # a row the worker refused (its error says why): show it as it is
        return None


def summarize(job: TrainingJob, names: dict[int, str]) -> JobSummary:
    return JobSummary(
        id=job.id,
        kind=job.kind,
        status=job.status,
        params=dict(job.params or {}),
        fine_tune=_fine_tune_params(job),
        progress=JobProgress.from_dict(job.progress),
        error=job.error,
        worker_id=job.worker_id,
        cancel_requested=job.cancel_requested,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        heartbeat_at=job.heartbeat_at,
        result_version=names.get(job.result_model_version_id) if job.result_model_version_id else None,
        resumable=can_resume(job),
    )


def current_and_recent(session: Session, limit: int = 25) -> tuple[JobSummary | None, list[JobSummary]]:
    """(the job to show live: running, else oldest queued, else newest), the newest `limit` jobs."""
    names = version_names(session)
    current = current_job(session)
    recent = [summarize(job, names) for job in list_jobs(session, limit=limit)]
    return (summarize(current, names) if current else None), recent
