"""The "evaluate" job: a registered version's test and validation reports (AUROC with bootstrap CIs and
n positives, ROC/PR curves, thresholds chosen on validation and reported on test, calibration,
subgroups) against the NLP labels and, where reviews exist, the reviewed ones, stored in the version's
`metrics`. Each split is predicted once for both label sources (`core.evaluation.suite`); the per-image
probabilities go to a compact .npz under CHEXNET_HOME/evaluations (named in `metrics["predictions"]`)
so versions can be compared on the same images without running them again. A fine-tune evaluates its
new version the same way."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from core import paths
from core.data.dataset import DatasetError, load_chestxray14
from core.evaluation.evaluate import EvaluationError, card_metrics_entry, split_images
from core.evaluation.prediction_store import save_stored
from core.evaluation.suite import evaluate_suite
from core.inference.artifact import read_artifact, update_card
from db import registry
from db.engine import session_scope
from db.export import export_labels_dataframe
from db.models import TrainingJob, utcnow
from jobs.folders import require_dataset_folder, run_folder
from jobs.imported_evaluation import PACS_SPLIT, ImportsEvaluation, evaluate_imports, labelled_imports
from jobs.labels import n_reviewed_images, reviewed_image_indexes
from jobs.params import EvaluateParams
from jobs.predict import cache_progress, registry_cache_folder
from jobs.progress import ImageCount
from jobs.run import JobRun

SPLITS = ("test", "val")
PREDICTIONS_FOLDER = "evaluations"  # under CHEXNET_HOME


def run_evaluate(run: JobRun, job: TrainingJob) -> None:
    params = EvaluateParams.from_dict(job.params)
    data_dir = require_dataset_folder(params.data_dir)
    with session_scope(run.engine, read_only=True) as session:
        version = registry.get_version(session, params.version_id)
        model_dir, name = registry.usable_model_dir(version), version.name
    run.update(stage="evaluate", stage_text="Evaluating", version=name, force=True)
    metrics = evaluate_model(run, model_dir, data_dir)
    if _is_ours(model_dir):  # the repository's demo model and folders made elsewhere are left as they are
        write_card_metrics(model_dir, metrics)
    run.stop_heartbeats()
    with session_scope(run.engine) as session:
        version = registry.get_version(session, params.version_id)
        version.metrics = {**(version.metrics or {}), **metrics}
        run.succeed(session, f"Evaluated {name!r}; its curves are on the Models & ROC page.")


def _is_ours(model_dir: Path) -> bool:
    return Path(model_dir).resolve().is_relative_to(paths.models_dir().resolve())


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


def _imported_evaluation(run: JobRun, model_dir: Path) -> ImportsEvaluation | None:
    """The report on the images imported from a PACS that readers labelled (None without any)."""
    from core.inference.predictor import Predictor

    with session_scope(run.engine, read_only=True) as session:
        imports = labelled_imports(session)
    if not imports.paths:
        return None

    def progress(done: int, total: int) -> None:
        text = "Evaluating on the images imported from a PACS (readers' labels)"
        run.update(stage="evaluate", stage_text=text, evaluation=ImageCount(done=done, total=total))

    predictor = Predictor.from_path(model_dir, backend=run.settings.eval_backend)
    return evaluate_imports(
        predictor, imports, model_name=predictor.name, n_boot=run.settings.n_boot, progress=progress,
        should_stop=run.should_cancel,
    )  # fmt: skip


def predictions_file(model_dir: Path) -> Path:
    """Where a model's per-image evaluation probabilities go: named after its folder and its weights."""
    artifact = read_artifact(model_dir)
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(model_dir).name)[:80] or "model"
    return paths.chexnet_home() / PREDICTIONS_FOLDER / f"{safe}-{artifact.weights_digest()[:12]}.npz"


def evaluate_model(run: JobRun, model_dir: Path, data_dir: Path) -> dict[str, Any]:
    """Test and validation reports against the NLP labels and, where reviews exist, the reviewed ones.

    One inference pass per split serves both label sources. A split without any reviewed image has the
    same labels either way: its "reviewed" report is the NLP one (marked `n_reviewed_in_split: 0`).
    """
    reviewed_table, reviewed_in_split = _reviewed_counts(run, model_dir, data_dir)
    sources: dict[str, Path | None] = {"nlp": None}
    if reviewed_table is not None:
        sources["reviewed"] = reviewed_table
    by_split = {split: ["nlp"] + (["reviewed"] if reviewed_in_split.get(split) else []) for split in SPLITS}

    def progress(split: str, part: int, parts: int, done: int, total: int) -> None:
        text = f"Evaluating on the {split} split ({part}/{parts}; one pass for every label source)"
        run.update(stage="evaluate", stage_text=text,
                   evaluation=ImageCount(done=done, total=total, part=part, parts=parts))  # fmt: skip

    # The predict job's cache: a version evaluated after another decodes no file a second time.
    resize = read_artifact(model_dir).resize
    try:
        suite = evaluate_suite(
            model_dir, data_dir, sources, SPLITS, sources_by_split=by_split, n_boot=run.settings.n_boot,
            backend=run.settings.eval_backend, progress=progress, should_cancel=run.should_cancel,
            cache_folder=registry_cache_folder(resize), cache_progress=cache_progress(run),
        )  # fmt: skip
    except EvaluationError as exc:
        suite, setup_error = None, str(exc)
    errors = list(suite.errors) if suite is not None else [setup_error]
    evaluations: dict[str, dict[str, Any]] = {}
    for labels, reports in (suite.reports if suite is not None else {}).items():
        for split, report in reports.items():
            if labels == "reviewed":
                report["n_reviewed_in_split"] = reviewed_in_split[split]
            evaluations.setdefault(labels, {})[split] = _compact(report)
    if reviewed_table is not None:
        for split, report in (evaluations.get("nlp") or {}).items():
            if not reviewed_in_split.get(split) and split in reviewed_in_split:
                same = {**report, "n_reviewed_in_split": 0}
                same["labels_source"] = "reviewed labels (no reviewed image in this split: same as NLP)"
                evaluations.setdefault("reviewed", {})[split] = same
    imported = _imported_evaluation(run, model_dir)
    stored = dict(suite.stored) if suite is not None else {}
    if imported is not None:
        evaluations.setdefault("reviewed", {})[PACS_SPLIT] = _compact(imported.report)
        stored[PACS_SPLIT] = imported.stored
    if errors:
        run.message("Some evaluations could not run: " + " ".join(errors))
    metrics: dict[str, Any] = {
        "evaluations": evaluations,
        "evaluation_errors": errors,
        "evaluated_at": utcnow().isoformat(),
        "evaluated_on": str(data_dir),
    }
    if suite is not None:
        metrics["evaluation_cost"] = {
            "inference_passes": suite.n_inference_passes,
            "images_predicted": suite.n_images_predicted,
            "label_sources": list(sources),
            "seconds": suite.seconds,
        }
    if stored:
        stored_at = save_stored(predictions_file(model_dir), stored)
        metrics["predictions"] = {
            "file": str(stored_at.relative_to(paths.chexnet_home())),
            "splits": {split: len(one.ids) for split, one in stored.items()},
            "sources": list(sources),
            "format": "core.evaluation.prediction_store npz",
        }
    return metrics


def write_card_metrics(model_dir: str | Path, metrics: dict[str, Any]) -> None:
    """The compact test figures go into the model card too, so the Predict page shows a measured AUROC
    with its positives; with them the thresholds chosen on the validation split, how, and their
    precision/recall on the test split, and the temperature fitted on the validation split."""
    card = read_artifact(model_dir).card
    card_metrics = dict(card.get("metrics") or {})
    changes: dict[str, Any] = {}
    # Only the test split: the card's "val" entry is the trainer's own (best epoch, from the cache).
    for labels, reports in (metrics.get("evaluations") or {}).items():
        if "test" in reports:
            key = "test" if labels == "nlp" else "test_reviewed_labels"
            card_metrics[key] = card_metrics_entry(reports["test"])
    test = ((metrics.get("evaluations") or {}).get("nlp") or {}).get("test") or {}
    points = test.get("operating_points")
    if points:
        chosen = {label: value for label, value in points["thresholds"].items() if value is not None}
        changes["thresholds"] = {**(card.get("thresholds") or {}), **chosen}
        changes["thresholds_source"] = points["description"]
        changes["operating_points"] = {
            key: points[key]
            for key in ("method", "sensitivity_target", "chosen_on", "reported_on", "description")
        } | {
            "classes": {
                label: {k: row.get(k) for k in ("threshold", "precision", "recall", "n_pos", "too_few")}
                for label, row in points["classes"].items()
            }
        }
    if test.get("temperature"):
        changes["temperature_scaling"] = {
            k: test["temperature"].get(k)
            for k in ("temperature", "split", "n_images", "method", "applied_by_predictor")
        }
    update_card(model_dir, metrics=card_metrics, **changes)


def _round(value: Any, digits: int = 5) -> Any:
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: _round(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [_round(v, digits) for v in value]
    return value


def _compact(report: dict[str, Any]) -> dict[str, Any]:
    """A report small enough for the version row: floats rounded, no per-image lists, no server paths
    (the model and dataset folders are the version's own and `evaluated_on`)."""
    dropped = ("image_ids", "per_image", "model_dir", "data_dir")
    return _round({k: v for k, v in report.items() if k not in dropped}, 4)


def jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
