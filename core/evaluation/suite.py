"""Every report of one model at once: each split predicted ONCE, then reported against every label source.

Before, an evaluation job ran one inference pass per (split, label source): four passes for test and
validation against NLP and reviewed labels. Here `core.evaluation.evaluate.predict_split` runs once per
split and
`core.evaluation.evaluate.split_report` makes each label source's report from it (with n positives per
finding and
the too-few marks). Each report here also carries:

- `calibration`: ECE, Brier score and reliability points per finding (core.evaluation.calibration), and,
fitted on
  the calibration split, one temperature and the calibration after it (`temperature`);
- `subgroups`: AUROC by sex, age band and view with the view-only baseline (core.evaluation.subgroups);
- `operating_points` (the report split): thresholds chosen on the calibration split (the validation
  split) by Youden's J and reported on this one (core.evaluation.operating_points); the report's own
  thresholds
  are those. On the calibration split itself the same thresholds are marked optimistic.

`SuiteResult.stored` holds each split's per-image probabilities and labels
(core.evaluation.prediction_store) for
paired comparisons without another inference pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import Cancelled
from core.evaluation.evaluate import (
    EvaluationError,
    LabelSource,
    Progress,
    SplitPass,
    open_evaluation,
    predict_split,
    read_label_source,
    split_images,
)
from core.evaluation.prediction_store import StoredSplit
from core.labels import FINDINGS

CALIBRATION_SPLIT = "val"
MIN_POSITIVES = 10
# progress(split, part, parts, done, total): images predicted in pass `part` of `parts`.
SuiteProgress = Callable[[str, int, int, int, int], None]


@dataclass
class SuiteResult:
    reports: dict[str, dict[str, dict[str, Any]]]  # label source -> split -> report
    stored: dict[str, StoredSplit]  # split -> per-image probabilities and labels
    errors: list[str] = field(default_factory=list)
    n_inference_passes: int = 0
    n_images_predicted: int = 0
    seconds: float = 0.0


def evaluate_suite(
    model_dir: str | Path,
    data_dir: str | Path,
    sources: Mapping[str, str | Path | None],
    splits: Sequence[str] = ("test", "val"),
    *,
    sources_by_split: Mapping[str, Sequence[str]] | None = None,
    n_boot: int = 1000,
    backend: str = "auto",
    device: str | None = None,
    batch_size: int = 16,
    seed: int = 0,
    progress: SuiteProgress | None = None,
    should_cancel: Callable[[], bool] | None = None,
    cache_folder: str | Path | None = None,
    cache_progress: Progress | None = None,
) -> SuiteResult:
    """Reports of `splits` against `sources` (name -> labels table CSV, None for the NLP labels).

    `sources_by_split` limits which sources a split is reported against (default: all). A split whose
    pass fails is named in `errors` and the others go on. `cache_folder`: an image cache keyed by file
    path at the model's resize (core.data.cache; the worker's is shared with its predict job). The splits'
    images missing from it are added first (`cache_progress(done, total)`), and the network then reads
    the cache instead of decoding the files, except for images with boxes (localization).
    """
    started = time.perf_counter()
    artifact, ds, predictor = open_evaluation(model_dir, data_dir, backend=backend, device=device)
    label_sources = {name: read_label_source(table) for name, table in sources.items()}
    cache = _image_cache(artifact, ds, splits, cache_folder, cache_progress) if cache_folder else None
    passes: dict[str, SplitPass] = {}
    errors: list[str] = []
    for part, split in enumerate(splits, start=1):
        if should_cancel is not None and should_cancel():
            raise Cancelled("The evaluation was cancelled.")

        def tick(done: int, total: int, split: str = split, part: int = part) -> None:
            if progress is not None:
                progress(split, part, len(splits), done, total)

        tick(0, 0)
        try:
            passes[split] = predict_split(
                artifact, ds, predictor, split, batch_size=batch_size, progress=tick, cache=cache
            )
        except EvaluationError as exc:
            errors.append(f"{split} split: {exc}")
    reports: dict[str, dict[str, dict[str, Any]]] = {}
    stored: dict[str, StoredSplit] = {}
    for split, split_pass in passes.items():
        stored[split] = StoredSplit(split, list(split_pass.ids), split_pass.labels,
                                    split_pass.probabilities.astype(np.float32))  # fmt: skip
        wanted = list(sources_by_split.get(split, sources)) if sources_by_split else list(sources)
        for name in wanted:
            try:
                report, truth, rows = _report(split_pass, passes, ds, label_sources, name, n_boot, seed)
            except EvaluationError as exc:
                errors.append(f"{split} split, {name} labels: {exc}")
                continue
            reports.setdefault(name, {})[split] = report
            stored[split].truth[name], stored[split].included[name] = truth, rows
    return SuiteResult(
        reports=reports,
        stored=stored,
        errors=errors,
        n_inference_passes=len(passes),
        n_images_predicted=sum(len(p.ids) + len(p.unreadable) for p in passes.values()),
        seconds=round(time.perf_counter() - started, 2),
    )


def _image_cache(
    artifact: Any, ds: Any, splits: Sequence[str], folder: str | Path, progress: Progress | None
) -> Any:
    """The cache holding every image of `splits`, or None when another process is building it (the
    files are then decoded as without a cache)."""
    from core.data.cache import CacheError, build_cache

    files: dict[str, Path] = {}
    for split in splits:
        try:
            ids, _ = split_images(ds, split, artifact.card)
        except EvaluationError:
            continue  # predict_split says why, for this split alone
        files.update((str(path), path) for path in ds.image_paths(ids).values())
    try:
        return build_cache(files, folder, artifact.resize, progress=progress)
    except CacheError:
        return None


def _truth(split_pass: SplitPass, ds: Any, labels: LabelSource) -> tuple[np.ndarray, np.ndarray]:
    """(labels [N, C] int8 of every image of the pass, which of them the source keeps)."""
    from core.data.dataset import DatasetError, labels_matrix

    rows = np.array([index not in labels.excluded for index in split_pass.ids], dtype=bool)
    columns = [FINDINGS.index(label) for label in split_pass.labels]
    try:
        return labels_matrix(ds, split_pass.ids, labels.table)[:, columns].astype(np.int8), rows
    except DatasetError as exc:
        raise EvaluationError(str(exc)) from exc


def _report(
    split_pass: SplitPass,
    passes: dict[str, SplitPass],
    ds: Any,
    label_sources: dict[str, LabelSource],
    name: str,
    n_boot: int,
    seed: int,
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    from core.evaluation.evaluate import split_report
    from core.evaluation.operating_points import OperatingPointError, operating_points

    labels = label_sources[name]
    truth, rows = _truth(split_pass, ds, labels)
    y, p = truth[rows], split_pass.probabilities[rows]
    if not len(y):
        raise EvaluationError(f"The {split_pass.split} split has no images to evaluate.")
    calibration_pass = passes.get(CALIBRATION_SPLIT)
    points, thresholds, source = None, "validation", None
    y_cal = p_cal = None
    if calibration_pass is not None:
        cal_truth, cal_rows = _truth(calibration_pass, ds, labels)
        y_cal, p_cal = cal_truth[cal_rows], calibration_pass.probabilities[cal_rows]
    if calibration_pass is not None and split_pass.split != CALIBRATION_SPLIT:
        cal_ids = [i for i, ok in zip(calibration_pass.ids, cal_rows, strict=True) if ok]
        ids = [i for i, ok in zip(split_pass.ids, rows, strict=True) if ok]
        try:
            points = operating_points(
                y_cal, p_cal, y, p, split_pass.labels, calibration_split=CALIBRATION_SPLIT,
                report_split=split_pass.split, calibration_ids=cal_ids, report_ids=ids,
            )  # fmt: skip
            thresholds, source = points["thresholds"], points["description"]
        except OperatingPointError as exc:
            source = f"model card (thresholds could not be chosen on {CALIBRATION_SPLIT}: {exc})"
    elif calibration_pass is not None:
        from core.evaluation.metrics import youden_thresholds

        thresholds = youden_thresholds(y, p, split_pass.labels)
        source = "Youden's J on this split, the calibration split (optimistic here; honest on test)"
    report = split_report(split_pass, ds, labels, n_boot=n_boot, seed=seed, thresholds=thresholds,
                          thresholds_source=source)  # fmt: skip
    if points is not None:
        report["operating_points"] = _jsonable(points)
    report.update(_extras(y, p, split_pass, rows, ds, y_cal, p_cal))
    return report, truth, rows


def _extras(
    y: np.ndarray, p: np.ndarray, split_pass: SplitPass, rows: np.ndarray, ds: Any,
    y_cal: np.ndarray | None, p_cal: np.ndarray | None,
) -> dict[str, Any]:  # fmt: skip
    """Calibration (with a temperature fitted on the calibration split) and subgroups."""
    from core.evaluation.calibration import (
        CalibrationError,
        apply_temperature,
        calibration_report,
        fit_temperature,
        logits_from_probabilities,
    )
    from core.evaluation.subgroups import SubgroupError, subgroup_report

    labels = list(split_pass.labels)
    out: dict[str, Any] = {}
    try:
        out["calibration"] = calibration_report(y, p, labels, min_positives=MIN_POSITIVES)
        if y_cal is not None and p_cal is not None:
            fit = fit_temperature(y_cal, logits_from_probabilities(p_cal), split=CALIBRATION_SPLIT)
            scaled = calibration_report(y, apply_temperature(logits_from_probabilities(p), fit.temperature),
                                        labels, min_positives=MIN_POSITIVES)  # fmt: skip
            out["temperature"] = {
                **fit.to_dict(),
                "applied_by_predictor": False,
                "mean_ece_after": scaled["mean_ece"],
                "mean_brier_after": scaled["mean_brier"],
                "ece_after": {label: v["ece"] for label, v in scaled["classes"].items()},
            }
    except CalibrationError as exc:
        out["calibration_error"] = str(exc)
    kept = [index for index, ok in zip(split_pass.ids, rows, strict=True) if ok]
    try:
        out["subgroups"] = subgroup_report(y, p, ds.entries.loc[kept], labels, min_positives=MIN_POSITIVES)
    except SubgroupError as exc:
        out["subgroups_error"] = str(exc)
    return _jsonable(out)


def _jsonable(value: Any) -> Any:
    from core.evaluation.metrics import to_jsonable

    return to_jsonable(value)
