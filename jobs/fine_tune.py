"""The "fine_tune" job: the labels table the run sees, the trainer (in this process, or under torchrun
with several GPUs), the evaluation of the result and its registration as a new version (never promoted).

The job row holds `FineTuneParams.to_dict()`; its `settings` go into the trainer's `TrainConfig` as they
are, and the version's hyper-parameters are those settings plus what the trainer's model card records.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from core.inference.artifact import ModelArtifact, read_artifact
from core.paths import models_dir
from core.training import TrainConfig, load_train_state, train
from db import registry
from db.engine import session_scope
from db.jobs import get_job
from db.models import TrainingJob, User, utcnow
from jobs.evaluate import evaluate_model, jsonable, write_card_metrics
from jobs.folders import require_dataset_folder, run_folder
from jobs.labels import write_labels_table
from jobs.params import FineTuneParams, JobParamsError
from jobs.progress import JobProgress
from jobs.run import JobRun
from jobs.torchrun import train_with_torchrun

log = logging.getLogger("chexnet.worker")
TRAINING_LABELS_FILE = "training_labels.csv"  # the table the run trained on, kept in the model folder


def labels_path(name: str) -> Path:
    return run_folder(name) / "labels.csv"


def run_fine_tune(run: JobRun, job: TrainingJob) -> None:
    params = FineTuneParams.from_dict(job.params)
    if not params.name:
        raise JobParamsError("The fine-tune job has no version name.")
    data_dir = require_dataset_folder(params.data_dir)
    out_dir = models_dir() / params.name
    with session_scope(run.engine, read_only=True) as session:
        base = (
            registry.get_version(session, params.base_version_id)
            if params.base_version_id is not None
            else None
        )
        base_id, base_path = (base.id, Path(base.path)) if base else (None, None)
        previous = get_job(session, params.resumed_from).progress if params.resumed_from else None
        if not params.resume and registry.name_taken(session, params.name):
            raise JobParamsError(f"A model version named {params.name!r} already exists.")
    if not params.resume and out_dir.exists():
        raise JobParamsError(f"The folder {out_dir} already exists; choose another version name.")

    run.update(stage="labels", stage_text="Preparing the labels", force=True)
    snapshot = _labels_for(run, params, data_dir)
    config = TrainConfig(
        data_dir=data_dir,
        out_dir=out_dir,
        settings=params.settings,
        init="artifact" if base_path else "random",
        base_model=base_path,
        base_crop=read_artifact(base_path).crop if base_path else None,
        labels_table=labels_path(params.name) if params.label_source == "effective" else None,
        device=run.settings.device,
        workers=run.settings.train_workers,
        resume=params.resume,
        name=params.name,
        description=f"Fine-tuned by job #{run.job_id} with labels: {snapshot['description']}.",
        keep_work=True,  # removed once registered: a worker dying while evaluating can still resume
    )
    if params.resume:
        state = load_train_state(config.work_dir)
        if state is not None:
            run.progress.continue_from(state, JobProgress.from_dict(previous) if previous else None)
            run.message(f"Resuming after epoch {state.get('epoch')} (job #{params.resumed_from}).")

    artifact = _train(run, config)
    run.update(stage="evaluate", stage_text="Evaluating", fraction=1.0, force=True)
    metrics = evaluate_model(run, artifact.path, data_dir)
    metrics["training"] = (artifact.card.get("metrics") or {}).get("val")
    metrics["history"] = artifact.card.get("history")
    write_card_metrics(artifact.path, metrics)
    shutil.copyfile(labels_path(params.name), Path(artifact.path) / TRAINING_LABELS_FILE)
    _register(run, params, artifact, base_id, snapshot, metrics)
    shutil.rmtree(config.work_dir, ignore_errors=True)
    log.info("Job %s registered version %r.", run.job_id, params.name)


def _train(run: JobRun, config: TrainConfig) -> ModelArtifact:
    if run.settings.nproc > 1:
        return train_with_torchrun(run, config)
    return train(config, progress=run.on_train_progress, should_cancel=run.should_cancel)


def _labels_for(run: JobRun, params: FineTuneParams, data_dir: Path) -> dict[str, Any]:
    """The labels table of the run (written once; a resumed run reuses the original one)."""
    table = labels_path(params.name)
    snapshot_path = table.with_suffix(".json")
    if params.resume and table.is_file() and snapshot_path.is_file():
        return json.loads(snapshot_path.read_text())
    with session_scope(run.engine, read_only=True) as session:
        snapshot = write_labels_table(
            session, params.label_source, data_dir, table, disputed_policy=params.disputed_policy
        )
    snapshot["taken_at"] = utcnow().isoformat()
    snapshot_path.write_text(json.dumps(snapshot, indent=2))
    run.message(
        f"Labels: {snapshot['description']}; {snapshot['n_images']:,} images, "
        f"{snapshot['n_reviewed']:,} reviewed, {snapshot['n_excluded']:,} excluded."
    )
    return snapshot


def _register(
    run: JobRun,
    params: FineTuneParams,
    artifact: ModelArtifact,
    base_id: int | None,
    snapshot: dict[str, Any],
    metrics: dict[str, Any],
) -> None:
    """The new version, with its parent, label snapshot and hyper-parameters, and the job's end, in one
    transaction."""
    hyperparams = {
        **params.settings.to_dict(),
        **((artifact.card.get("provenance") or {}).get("hyperparameters") or {}),
        "label_source": params.label_source,
        "job_id": run.job_id,
        "device": run.device_text,
        "nproc": run.settings.nproc,
    }
    run.stop_heartbeats()
    with session_scope(run.engine) as session:
        creator = session.get(User, run.created_by_id) if run.created_by_id else None
        version = registry.register_model_version(
            session,
            params.name,
            str(Path(artifact.path).resolve()),
            parent_id=base_id,
            label_snapshot=snapshot,
            hyperparams=jsonable(hyperparams),
            metrics=metrics,
            notes=artifact.card.get("description", ""),
            created_by=creator,
        )
        session.flush()
        run.progress.result_version = params.name
        run.succeed(session, f"Registered version {params.name!r}.", result_version_id=version.id)
