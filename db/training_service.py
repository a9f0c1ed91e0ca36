"""The glue between the admin pages, the job queue and the trainer.

- Job parameters: `enqueue_fine_tune` / `enqueue_predict` / `enqueue_evaluate` validate what the admin
  asked for and queue it (db.jobs); `fine_tune_params` re-checks a job's params in the worker.
- Labels: `write_labels_table` writes the labels a run sees ("nlp": the dataset's own labels;
  "effective": consensus / adjudication where reviewed, NLP elsewhere, excluded images marked) and
  returns the snapshot stored with the version (source, counts, sha256 of the table).
- Registry: `promote_version` / `rollback_version` switch the active version *and* the ACTIVE pointer
  (core.paths) that the Predict page and the CLIs read; `seed_registry` registers the bundled demo
  model on an empty registry.

Nothing here trains: the worker (db.worker) does, in its own process.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core import paths
from core.artifact import ArtifactError, read_artifact
from core.labels import FINDINGS
from core.paths import active_model_dir, models_dir, set_active_model_dir
from db import registry
from db.errors import DbUserError
from db.jobs import enqueue_job, get_job
from db.models import Adjudication, Image, ModelVersion, Review, TrainingJob, User

JOB_FINE_TUNE = "fine_tune"
JOB_PREDICT = "predict"
JOB_EVALUATE = "evaluate"
JOB_KINDS = (JOB_FINE_TUNE, JOB_PREDICT, JOB_EVALUATE)
JOB_KIND_TEXT = {JOB_FINE_TUNE: "Fine-tune", JOB_PREDICT: "Store predictions", JOB_EVALUATE: "Evaluate"}

LABEL_SOURCES: dict[str, str] = {
    "nlp": "Dataset labels (NLP-mined)",
    "effective": "Reviewed labels where available, NLP elsewhere",
}
DATA_ENTRY_NAMES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
RUNS_FOLDER = ".runs"  # under models_dir(): per-run label tables, kept for provenance and resumption
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
LIMITS = {"epochs": (1, 500), "batch_size": (1, 4096), "image_size": (32, 1024)}


class JobParamsError(DbUserError, ValueError):
    """A job cannot run with the parameters it was given (one human sentence)."""


# ----------------------------------------------------------------------------------------------------
# Where things are


def runs_dir() -> Path:
    path = models_dir() / RUNS_FOLDER
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_folder(name: str) -> Path:
    """Files of one training run that outlive its work folder (the labels table it trained on)."""
    path = runs_dir() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def is_dataset_folder(path: str | Path) -> bool:
    folder = Path(path).expanduser()
    return folder.is_dir() and any((folder / name).is_file() for name in DATA_ENTRY_NAMES)


def dataset_root(session: Session) -> Path | None:
    """The ChestX-ray14 folder the imported images come from (the folder holding Data_Entry), if any."""
    path = session.scalar(
        select(Image.path)
        .where(Image.source == "dataset", Image.path.is_not(None))
        .order_by(Image.id)
        .limit(1)
    )
    if not path:
        return None
    for parent in list(Path(path).parents)[:4]:  # images/x.png or images_001/images/x.png
        if is_dataset_folder(parent):
            return parent
    return None


# ----------------------------------------------------------------------------------------------------
# Fine-tune parameters


@dataclass(frozen=True)
class FineTuneParams:
    name: str
    base_version_id: int | None
    data_dir: Path
    epochs: int
    batch_size: int
    lr: float | None
    label_source: str
    class_weighting: bool
    resume: bool
    image_size: int | None  # None: the base model's crop (224 for CheXNet)
    val_fraction: float
    seed: int
    patience: int | None
    resumed_from: int | None

    @property
    def out_dir(self) -> Path:
        return models_dir() / self.name

    @property
    def labels_path(self) -> Path:
        return run_folder(self.name) / "labels.csv"


def _int(params: dict[str, Any], key: str, default: int | None = None) -> int:
    value = params.get(key, default)
    try:
        number = int(value)
        if number != float(value):
            raise ValueError
    except (TypeError, ValueError):
        raise JobParamsError(f"The {key.replace('_', ' ')} must be a whole number, not {value!r}.") from None
    low, high = LIMITS.get(key, (None, None))
    if low is not None and not low <= number <= high:
        raise JobParamsError(f"The {key.replace('_', ' ')} must be between {low} and {high}, not {number}.")
    return number


def fine_tune_params(params: dict[str, Any]) -> FineTuneParams:
    """A fine-tune job's params, checked; raises JobParamsError with a sentence."""
    name = str(params.get("name") or "").strip()
    if not _NAME.match(name):
        raise JobParamsError(
            f"{name!r} is not a usable version name: use letters, digits, '.', '_' or '-' (at most 100)."
        )
    data_dir = params.get("data_dir")
    if not data_dir or not is_dataset_folder(data_dir):
        raise JobParamsError(
            f"The dataset folder {data_dir!r} is not a ChestX-ray14 folder (no Data_Entry CSV)."
        )
    lr = params.get("lr")
    if lr is not None:
        try:
            lr = float(lr)
        except (TypeError, ValueError):
            raise JobParamsError(f"The learning rate must be a number, not {lr!r}.") from None
        if not 0 < lr < 1:
            raise JobParamsError(f"The learning rate must be between 0 and 1, not {lr:g}.")
    source = params.get("label_source", "nlp")
    if source not in LABEL_SOURCES:
        raise JobParamsError(f"Unknown label source {source!r}: use {' or '.join(LABEL_SOURCES)}.")
    val_fraction = float(params.get("val_fraction", 0.1))
    if not 0 < val_fraction < 0.9:
        raise JobParamsError(f"The validation fraction must be between 0 and 0.9, not {val_fraction:g}.")
    patience = params.get("patience", 3)
    return FineTuneParams(
        name=name,
        base_version_id=None if params.get("base_version_id") is None else _int(params, "base_version_id"),
        data_dir=Path(data_dir).expanduser(),
        epochs=_int(params, "epochs", 3),
        batch_size=_int(params, "batch_size", 16),
        lr=lr,
        label_source=source,
        class_weighting=bool(params.get("class_weighting", False)),
        resume=bool(params.get("resume", False)),
        image_size=None if params.get("image_size") is None else _int(params, "image_size"),
        val_fraction=val_fraction,
        seed=_int(params, "seed", 0),
        patience=None if patience in (None, 0) else _int(params, "patience", 3),
        resumed_from=None if params.get("resumed_from") is None else _int(params, "resumed_from"),
    )


def _name_in_use(session: Session, name: str, ignore_job: int | None = None) -> str | None:
    """Why `name` cannot be used for a new run, or None."""
    if session.scalar(select(ModelVersion.id).where(ModelVersion.name == name)) is not None:
        return f"A model version named {name!r} already exists."
    for job in session.scalars(
        select(TrainingJob).where(
            TrainingJob.kind == JOB_FINE_TUNE, TrainingJob.status.in_(("queued", "running"))
        )
    ):
        if job.id != ignore_job and (job.params or {}).get("name") == name:
            return f"Job #{job.id} is already training a version named {name!r}."
    if (models_dir() / name).exists():
        return f"The folder {models_dir() / name} already exists; choose another name."
    return None


def suggest_version_name(session: Session, base: ModelVersion | None) -> str:
    stem = re.sub(r"-ft\d+$", "", base.name if base is not None else "chexnet")
    for number in range(1, 10_000):
        name = f"{stem}-ft{number}"
        if _name_in_use(session, name) is None:
            return name
    raise JobParamsError("No free version name was found; type one.")


def enqueue_fine_tune(
    session: Session,
    *,
    base_version_id: int | None,
    epochs: int,
    batch_size: int,
    lr: float | None,
    label_source: str,
    class_weighting: bool = False,
    name: str | None = None,
    data_dir: str | Path | None = None,
    created_by: User | None = None,
    **advanced: Any,
) -> TrainingJob:
    """Queue a fine-tune of `base_version_id` (None: from random weights). Raises JobParamsError."""
    base = registry.get_version(session, base_version_id) if base_version_id is not None else None
    if base is not None:
        try:
            read_artifact(base.path)
        except ArtifactError as exc:
            raise JobParamsError(f"The base version {base.name!r} cannot be read: {exc}") from exc
    if data_dir is None:
        data_dir = dataset_root(session)
        if data_dir is None:
            raise JobParamsError("No dataset has been imported yet; import a ChestX-ray14 folder first.")
    params = {
        "name": (name or "").strip() or suggest_version_name(session, base),
        "base_version_id": base_version_id,
        "data_dir": str(Path(data_dir).expanduser()),
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "label_source": label_source,
        "class_weighting": bool(class_weighting),
        "resume": False,
        **advanced,
    }
    checked = fine_tune_params(params)
    problem = _name_in_use(session, checked.name)
    if problem:
        raise JobParamsError(problem)
    return enqueue_job(session, params, kind=JOB_FINE_TUNE, created_by=created_by)


def enqueue_predict(
    session: Session, *, version_id: int | None = None, created_by: User | None = None
) -> TrainingJob:
    """Queue storing a version's (default: the active one's) probabilities for every imported image."""
    version = registry.get_version(session, version_id) if version_id is not None else None
    version = version or registry.get_active_version(session)
    if version is None:
        raise JobParamsError("No model version is active; promote one first.")
    if not session.scalar(select(func.count()).select_from(Image).where(Image.path.is_not(None))):
        raise JobParamsError("No images with files have been imported yet.")
    return enqueue_job(session, {"version_id": version.id}, kind=JOB_PREDICT, created_by=created_by)


def enqueue_evaluate(
    session: Session, *, version_id: int, data_dir: str | Path | None = None, created_by: User | None = None
) -> TrainingJob:
    """Queue evaluating a version on the dataset's test and validation splits (NLP and reviewed labels)."""
    version = registry.get_version(session, version_id)
    data_dir = data_dir or dataset_root(session)
    if data_dir is None or not is_dataset_folder(data_dir):
        raise JobParamsError("No dataset has been imported yet; import a ChestX-ray14 folder first.")
    return enqueue_job(
        session,
        {"version_id": version.id, "data_dir": str(data_dir)},
        kind=JOB_EVALUATE,
        created_by=created_by,
    )


def ensure_evaluated(session: Session, version_id: int, created_by: User | None = None) -> TrainingJob | None:
    """Queue an evaluation of a version that has none yet (and none queued), when a dataset is imported.

    So that the dashboards have curves for the demo model soon after the first import.
    """
    version = registry.get_version(session, version_id)
    if (version.metrics or {}).get("evaluations") or dataset_root(session) is None:
        return None
    pending = session.scalars(
        select(TrainingJob).where(
            TrainingJob.kind == JOB_EVALUATE, TrainingJob.status.in_(("queued", "running"))
        )
    )
    if any((job.params or {}).get("version_id") == version.id for job in pending):
        return None
    return enqueue_evaluate(session, version_id=version.id, created_by=created_by)


def can_resume(job: TrainingJob) -> bool:
    """An interrupted or cancelled fine-tune whose last finished epoch is saved."""
    from core.training import STATE_FILE

    if job.kind != JOB_FINE_TUNE or job.status not in ("interrupted", "cancelled"):
        return False
    name = (job.params or {}).get("name")
    return bool(name) and (models_dir() / f"{name}.work" / STATE_FILE).is_file()


def resume_job(session: Session, job_id: int, created_by: User | None = None) -> TrainingJob:
    """Queue a new job that continues `job_id` from its last saved epoch (same output and work folder)."""
    job = get_job(session, job_id)
    if not can_resume(job):
        raise JobParamsError(f"Job #{job.id} ({job.status}) has no saved epoch to resume from.")
    params = dict(job.params or {})
    name = params.get("name", "")
    if session.scalar(select(ModelVersion.id).where(ModelVersion.name == name)) is not None:
        raise JobParamsError(f"A model version named {name!r} already exists.")
    for other in session.scalars(
        select(TrainingJob).where(
            TrainingJob.kind == JOB_FINE_TUNE, TrainingJob.status.in_(("queued", "running"))
        )
    ):
        if (other.params or {}).get("name") == name:
            raise JobParamsError(f"Job #{other.id} is already continuing {name!r}.")
    params.update(resume=True, resumed_from=job.id)
    return enqueue_job(session, params, kind=JOB_FINE_TUNE, created_by=created_by)


def current_job(session: Session) -> TrainingJob | None:
    """The running job, else the oldest queued one, else the newest job of any status."""
    for status, order in (("running", TrainingJob.started_at.desc()), ("queued", TrainingJob.created_at)):
        job = session.scalars(
            select(TrainingJob).where(TrainingJob.status == status).order_by(order).limit(1)
        ).first()
        if job is not None:
            return job
    return session.scalars(select(TrainingJob).order_by(TrainingJob.id.desc()).limit(1)).first()


# ----------------------------------------------------------------------------------------------------
# Labels a run sees


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def n_reviewed_images(session: Session) -> int:
    """Images with a clinician review or an admin adjudication."""
    reviewed = select(Review.image_id).union(select(Adjudication.image_id)).subquery()
    return int(session.scalar(select(func.count()).select_from(reviewed)) or 0)


def write_labels_table(session: Session, source: str, data_dir: Path, path: Path) -> dict[str, Any]:
    """Write the labels table of `source` to `path` (trainer format) and return its snapshot.

    "effective": db.export's trainer table (consensus/adjudication where reviewed, NLP elsewhere,
    `exclude` set where the reviewers excluded the image). "nlp": the dataset's Data_Entry labels.
    """
    from core.dataset import DatasetError, load_chestxray14
    from db.export import TRAINER_COLUMNS, export_labels_dataframe

    if source == "effective":
        table = export_labels_dataframe(session, "trainer")
        n_reviewed = n_reviewed_images(session)
        origin = "db.export trainer table (effective labels)"
    elif source == "nlp":
        try:
            ds = load_chestxray14(data_dir, require_images=False)
        except DatasetError as exc:
            raise JobParamsError(str(exc)) from exc
        entries = ds.entries.reset_index(drop=True)
        table = pd.DataFrame({"image_index": entries["image_index"].astype(str)})
        for finding in FINDINGS:
            table[finding] = entries[finding].astype(int).to_numpy()
        table["exclude"] = 0
        table = table[TRAINER_COLUMNS].sort_values("image_index", kind="stable").reset_index(drop=True)
        n_reviewed = 0
        origin = f"{ds.data_entry_name} (NLP-mined labels)"
    else:
        raise JobParamsError(f"Unknown label source {source!r}.")
    if table.empty:
        raise JobParamsError("There are no labels to train on; import a dataset first.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    table.to_csv(tmp, index=False)
    tmp.replace(path)
    kept = table[table["exclude"] == 0]
    return {
        "source": source,
        "description": LABEL_SOURCES[source],
        "origin": origin,
        "table": str(path),
        "sha256": _sha256(path),
        "n_images": int(len(table)),
        "n_reviewed": int(n_reviewed),
        "n_excluded": int((table["exclude"] != 0).sum()),
        "positives": {finding: int(kept[finding].sum()) for finding in FINDINGS},
    }


# ----------------------------------------------------------------------------------------------------
# Registry


def promote_version(session: Session, version: int | str) -> ModelVersion:
    """Make `version` active in the registry and point the app's ACTIVE model at its folder."""
    target = registry.get_version(session, version)
    try:
        read_artifact(target.path)
    except ArtifactError as exc:
        raise DbUserError(
            f"{target.name!r} cannot be promoted: its model folder is unreadable ({exc})."
        ) from exc
    promoted = registry.promote(session, target.id)
    session.flush()
    set_active_model_dir(Path(promoted.path))
    return promoted


def rollback_version(session: Session, to_version: int | str | None = None) -> ModelVersion:
    """Promote an earlier version (by default the one active before the current one)."""
    target = registry.rollback(session, to_version)
    set_active_model_dir(Path(target.path))
    return target


def _card_metrics(card: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in (card.get("metrics") or {}).items() if isinstance(value, dict)}


def register_existing_model(
    session: Session, model_dir: Path, *, notes: str = "", created_by: User | None = None
) -> ModelVersion:
    """Register a model folder made outside the app (the demo model, a CLI run, an imported checkpoint)."""
    artifact = read_artifact(model_dir)
    card = artifact.card
    provenance = card.get("provenance") or {}
    label_source = provenance.get("label_source")
    snapshot = {
        "source": "nlp" if label_source in (None, "nlp") or "NLP" in str(label_source) else "table",
        "description": str(label_source or "as recorded in the model card"),
    }
    return registry.register_model_version(
        session,
        artifact.name,
        str(Path(model_dir).resolve()),
        label_snapshot=snapshot,
        hyperparams=provenance.get("hyperparameters"),
        metrics={"card": _card_metrics(card)},
        notes=notes or (card.get("description") or "")[:2000],
        created_by=created_by,
    )


def seed_registry(session: Session) -> ModelVersion | None:
    """On an empty registry, register the model the app uses now (normally the bundled demo) as active,
    and queue its evaluation when a dataset is already imported.

    Returns the version registered, or None when the registry was not empty or there is no model.
    """
    if session.scalar(select(func.count()).select_from(ModelVersion)):
        return None
    current = active_model_dir()
    candidates = [path for path in (current, paths.BUNDLED_MODEL_DIR) if path is not None]
    for path in candidates:
        try:
            version = register_existing_model(session, Path(path), notes="Registered on first start.")
        except (ArtifactError, OSError):
            continue
        except registry.ModelNameTakenError:
            return None  # another process seeded it at the same moment
        registry.promote(session, version.id)
        session.flush()
        ensure_evaluated(session, version.id)
        return registry.get_version(session, version.id)
    return None
