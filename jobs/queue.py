"""Queueing jobs: what the admin pages call. Each `enqueue_*` checks what was asked and stores the
job's typed params (jobs.params) in a new queued row (db.jobs); a worker (`python -m jobs`) runs it.

One name-in-use check (`name_in_use`) guards every fine-tune and resumption: a version name is free
when no version, no queued or running fine-tune and no folder under CHEXNET_HOME/models has it.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.inference.artifact import ArtifactError, read_artifact
from core.paths import models_dir
from core.training import STATE_FILE
from db import registry
from db.jobs import active_jobs, enqueue_job, get_job
from db.models import Image, ModelVersion, TrainingJob, User
from jobs.folders import dataset_root, require_dataset_folder
from jobs.params import (
    JOB_EVALUATE,
    JOB_FINE_TUNE,
    JOB_PREDICT,
    EvaluateParams,
    FineTuneParams,
    JobParamsError,
    PredictParams,
)
from jobs.screen import JOB_SCREEN, ScreenParams
from jobs.targets import version_or_active

RESUMABLE_STATUSES = ("interrupted", "cancelled")


def name_in_use(session: Session, name: str, *, resuming: bool = False) -> str | None:
    """Why `name` cannot be used for a new run (or, `resuming`, for continuing one), or None.

    A resumption continues its own folders, so only another version or running job stands in its way.
    """
    if registry.name_taken(session, name):
        return f"A model version named {name!r} already exists."
    for job in active_jobs(session, kind=JOB_FINE_TUNE):
        if (job.params or {}).get("name") == name:
            if resuming:
                return f"Job #{job.id} is already continuing {name!r}."
            return f"Job #{job.id} is already training a version named {name!r}."
    if not resuming and (models_dir() / name).exists():
        return f"The folder {models_dir() / name} already exists; choose another name."
    return None


def suggest_version_name(session: Session, base: ModelVersion | None) -> str:
    """The first free `<base>-ftN` name."""
    stem = re.sub(r"-ft\d+$", "", base.name if base is not None else "chexnet")
    for number in range(1, 10_000):
        name = f"{stem}-ft{number}"
        if name_in_use(session, name) is None:
            return name
    raise JobParamsError("No free version name was found; type one.")


def _require_dataset(session: Session, data_dir: Path | str | None) -> Path:
    data_dir = data_dir or dataset_root(session)
    if data_dir is None:
        raise JobParamsError("No dataset has been imported yet; import a ChestX-ray14 folder first.")
    return require_dataset_folder(data_dir)


def enqueue_fine_tune(
    session: Session, params: FineTuneParams, created_by: User | None = None
) -> TrainingJob:
    """Queue a new fine-tune; a blank name becomes a free one, no dataset folder the imported one."""
    if params.resume or params.resumed_from is not None:
        raise JobParamsError("A new fine-tune does not resume; use Resume on the stopped job instead.")
    base = (
        registry.get_version(session, params.base_version_id) if params.base_version_id is not None else None
    )
    if base is not None:
        try:
            read_artifact(base.path)
        except ArtifactError as exc:
            raise JobParamsError(f"The base version {base.name!r} cannot be read: {exc}") from exc
    params = dataclasses.replace(
        params,
        name=params.name or suggest_version_name(session, base),
        data_dir=_require_dataset(session, params.data_dir),
    )
    problem = name_in_use(session, params.name)
    if problem:
        raise JobParamsError(problem)
    return enqueue_job(session, params.to_dict(), kind=JOB_FINE_TUNE, created_by=created_by)


def n_images_with_files(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(Image).where(Image.path.is_not(None))) or 0)


def enqueue_predict(
    session: Session, *, version_id: int | None = None, created_by: User | None = None
) -> TrainingJob:
    """Queue storing a version's (default: the active one's) probabilities for every imported image."""
    version = version_or_active(session, version_id)
    if not n_images_with_files(session):
        raise JobParamsError("No images with files have been imported yet.")
    params = PredictParams(version_id=version.id)
    return enqueue_job(session, params.to_dict(), kind=JOB_PREDICT, created_by=created_by)


def enqueue_screen(
    session: Session, *, version_id: int | None = None, created_by: User | None = None
) -> TrainingJob:
    """Queue screening every imported image with a version's (default: the active one's) OOD gate; the
    flagged images become suggested exclusions for review (jobs.screen), none is dropped."""
    version = version_or_active(session, version_id)
    if not n_images_with_files(session):
        raise JobParamsError("No images with files have been imported yet.")
    for job in active_jobs(session, kind=JOB_SCREEN):
        if (job.params or {}).get("version_id") == version.id:
            raise JobParamsError(f"Job #{job.id} is already screening the images with {version.name!r}.")
    params = ScreenParams(version_id=version.id)
    return enqueue_job(session, params.to_dict(), kind=JOB_SCREEN, created_by=created_by)


def enqueue_evaluate(
    session: Session, *, version_id: int, data_dir: str | Path | None = None, created_by: User | None = None
) -> TrainingJob:
    """Queue evaluating a version on the dataset's test and validation splits (NLP and reviewed labels)."""
    version = registry.get_version(session, version_id)
    params = EvaluateParams(version_id=version.id, data_dir=_require_dataset(session, data_dir))
    return enqueue_job(session, params.to_dict(), kind=JOB_EVALUATE, created_by=created_by)


def ensure_evaluated(session: Session, version_id: int, created_by: User | None = None) -> TrainingJob | None:
    """Queue an evaluation of a version that has none yet (and none queued), when a dataset is imported,
    so that the dashboards get curves for the demo model soon after the first import."""
    version = registry.get_version(session, version_id)
    if (version.metrics or {}).get("evaluations") or dataset_root(session) is None:
        return None
    if any(
        (job.params or {}).get("version_id") == version.id for job in active_jobs(session, kind=JOB_EVALUATE)
    ):
        return None
    return enqueue_evaluate(session, version_id=version.id, created_by=created_by)


def can_resume(job: TrainingJob) -> bool:
    """An interrupted or cancelled fine-tune whose last finished epoch is saved."""
    if job.kind != JOB_FINE_TUNE or job.status not in RESUMABLE_STATUSES:
        return False
    name = (job.params or {}).get("name")
    return isinstance(name, str) and bool(name) and (models_dir() / f"{name}.work" / STATE_FILE).is_file()


def resume_job(session: Session, job_id: int, created_by: User | None = None) -> TrainingJob:
    """Queue a new job that continues `job_id` from its last saved epoch (same output and work folder)."""
    job = get_job(session, job_id)
    if not can_resume(job):
        raise JobParamsError(f"Job #{job.id} ({job.status}) has no saved epoch to resume from.")
    params = FineTuneParams.from_dict(job.params)
    problem = name_in_use(session, params.name, resuming=True)
    if problem:
        raise JobParamsError(problem)
    params = dataclasses.replace(params, resume=True, resumed_from=job.id)
    return enqueue_job(session, params.to_dict(), kind=JOB_FINE_TUNE, created_by=created_by)
