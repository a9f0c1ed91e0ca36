"""The "evaluate" job: a registered version's test and validation reports (AUROC with bootstrap CIs,
ROC/PR curves, operating thresholds) against the NLP labels and, where reviews exist, the reviewed
ones, stored in the version's `metrics`. A fine-tune evaluates its new version the same way."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.artifact import read_artifact, update_card
from core.dataset import DatasetError, load_chestxray14
from core.evaluate import EvaluationError, card_metrics_entry, evaluate, split_images
from core.training import TrainingCancelled
from db import registry
from db.engine import session_scope
from db.export import export_labels_dataframe
from db.models import TrainingJob, utcnow
from jobs.folders import require_dataset_folder, run_folder
from jobs.labels import n_reviewed_images, reviewed_image_indexes
from jobs.params import EvaluateParams
from jobs.progress import ImageCount
from jobs.run import JobRun

SPLITS = ("test", "val")


def run_evaluate(run: JobRun, job: TrainingJob) -> None:
    params = EvaluateParams.from_dict(job.params)
    data_dir = require_dataset_folder(params.data_dir)
    with session_scope(run.engine, read_only=True) as session:
        version = registry.get_version(session, params.version_id)
        model_dir, name = Path(version.path), version.name
    run.update(stage="evaluate", stage_text="Evaluating", version=name, force=True)
    metrics = evaluate_model(run, model_dir, data_dir)
    run.stop_heartbeats()
    with session_scope(run.engine) as session:
        version = registry.get_version(session, params.version_id)
        version.metrics = {**(version.metrics or {}), **metrics}
        run.succeed(session, f"Evaluated {name!r}; its curves are on the Models & ROC page.")


def _reviewed_counts(run: JobRun, model_dir: Path, data_dir: Path) -> tuple[Path | None, dict[str, int]]:
    """The reviewed labels table (None without reviews) and how many reviewed images each split has."""
    with session_scope(run.engine, read_only=True) as session:
        if not n_reviewed_images(session):
            return None, {}
        table = run_folder(f"eval-job{run.job_id}") / "reviewed-labels.csv"
        export_labels_dataframe(session, "trainer").to_csv(table, index=False)
        reviewed = reviewed_image_indexes(session)
    counts: dict[str, int] = {}
    try:
        ds = load_chestxray14(data_dir)
        card = read_artifact(model_dir).card
        for split in SPLITS:
            counts[split] = len(reviewed.intersection(split_images(ds, split, card)[0]))
    except (DatasetError, EvaluationError):
        pass  # the NLP evaluation reports the problem
    return table, counts


def evaluate_model(run: JobRun, model_dir: Path, data_dir: Path) -> dict[str, Any]:
    """Test and validation reports against the NLP labels and, where reviews exist, the reviewed ones.

    A split without any reviewed image has the same labels either way: its "reviewed" report is the
    NLP one (marked `n_reviewed_in_split: 0`) instead of a second pass over the same images.
    """
    reviewed_table, reviewed_in_split = _reviewed_counts(run, model_dir, data_dir)
    plans = [("nlp", None, split) for split in SPLITS]
    plans += [("reviewed", reviewed_table, split) for split in SPLITS if reviewed_in_split.get(split)]
    evaluations: dict[str, dict[str, Any]] = {}
    errors: list[str] = []
    for number, (labels, table, split) in enumerate(plans, start=1):
        if run.should_cancel():
            raise TrainingCancelled("The evaluation was cancelled.")
        against = "NLP" if labels == "nlp" else "reviewed"
        text = f"Evaluating on the {split} split against {against} labels ({number}/{len(plans)})"

        def progress(done: int, total: int, number: int = number, text: str = text) -> None:
            part = ImageCount(done=done, total=total, part=number, parts=len(plans))
            run.update(stage="evaluate", stage_text=text, evaluation=part)

        progress(0, 0)
        try:
            report = evaluate(
                model_dir,
                data_dir,
                split,
                labels_table=table,
                progress=progress,
                n_boot=run.settings.n_boot,
                backend=run.settings.eval_backend,
            )
        except EvaluationError as exc:
            errors.append(f"{split} split, {against} labels: {exc}")
            continue
        if labels == "reviewed":
            report["n_reviewed_in_split"] = reviewed_in_split[split]
        evaluations.setdefault(labels, {})[split] = _compact(report)
    if reviewed_table is not None:
        for split, report in (evaluations.get("nlp") or {}).items():
            if not reviewed_in_split.get(split) and split in reviewed_in_split:
                same = {**report, "n_reviewed_in_split": 0}
                same["labels_source"] = "reviewed labels (no reviewed image in this split: same as NLP)"
                evaluations.setdefault("reviewed", {})[split] = same
    if errors:
        run.message("Some evaluations could not run: " + " ".join(errors))
    return {
        "evaluations": evaluations,
        "evaluation_errors": errors,
        "evaluated_at": utcnow().isoformat(),
        "evaluated_on": str(data_dir),
    }


def write_card_metrics(model_dir: str | Path, metrics: dict[str, Any]) -> None:
    """The compact test figures go into the model card too, so the Predict page shows a measured AUROC."""
    card_metrics = dict(read_artifact(model_dir).card.get("metrics") or {})
    # Only the test split: the card's "val" entry is the trainer's own (best epoch, from the cache).
    for labels, reports in (metrics.get("evaluations") or {}).items():
        if "test" in reports:
            key = "test" if labels == "nlp" else "test_reviewed_labels"
            card_metrics[key] = card_metrics_entry(reports["test"])
    update_card(model_dir, metrics=card_metrics)


def _round(value: Any, digits: int = 5) -> Any:
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: _round(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [_round(v, digits) for v in value]
    return value


def _compact(report: dict[str, Any]) -> dict[str, Any]:
    """A report small enough for the version row: floats rounded, no per-image lists."""
    return _round({k: v for k, v in report.items() if k not in ("image_ids", "per_image")})


def jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
