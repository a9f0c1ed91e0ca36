"""Evaluation of multi-label CheXNet outputs: AUROC (+ bootstrap CIs), ROC/PR curves, operating points.

Inputs are numpy arrays `y_true [N, C]` (0/1) and `y_prob [N, C]` (scores, usually sigmoid probabilities)
with columns in the order of `labels` (default `core.labels.FINDINGS`). Outputs are plain python
(dicts, lists, floats, ints, None) so they can be stored as JSON as they are: no numpy scalars, no NaN,
no infinity. A metric that is undefined on the data (e.g. AUROC of a class without positives) is None
and is left out of the means.

Threshold semantics everywhere: an image is predicted positive for a class when `prob >= threshold`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_curve

from core.errors import UserError
from core.labels import FINDINGS

ProgressFn = Callable[[int, int], None]
Thresholds = Mapping[str, float | None] | Sequence[float | None] | float

THRESHOLD_METHODS = ("youden", "sensitivity", "fixed")


class MetricsInputError(UserError, ValueError):
    """Raised when predictions and labels cannot be evaluated together; str() is one sentence."""


# --------------------------------------------------------------------------------------------------
# Input handling and JSON hygiene


def _as_arrays(y_true: Any, y_prob: Any, labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    labels = list(labels)
    truth = np.asarray(y_true)
    prob = np.asarray(y_prob, dtype=np.float64)
    if truth.ndim == 1:
        truth = truth.reshape(-1, 1)
    if prob.ndim == 1:
        prob = prob.reshape(-1, 1)
    if truth.ndim != 2 or prob.ndim != 2:
        raise MetricsInputError("Labels and predictions must be 2-D arrays of shape [images, classes].")
    if truth.shape != prob.shape:
        raise MetricsInputError(
            f"Labels have shape {truth.shape} but predictions have shape {prob.shape}; they must match."
        )
    if truth.shape[1] != len(labels):
        raise MetricsInputError(
            f"The arrays have {truth.shape[1]} class columns but {len(labels)} class names were given."
        )
    if truth.shape[0] == 0:
        raise MetricsInputError("There are no images to evaluate.")
    if not np.all(np.isfinite(prob)):
        raise MetricsInputError("The predictions contain NaN or infinite values.")
    truth_f = truth.astype(np.float64)
    if not np.all((truth_f == 0) | (truth_f == 1)):
        raise MetricsInputError("Labels must be 0 or 1 (uncertain labels have to be resolved first).")
    return truth_f.astype(np.int8), prob, labels


def _num(value: Any) -> float | None:
    """A python float, or None for NaN/inf/None."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def to_jsonable(obj: Any) -> Any:
    """Recursively convert numpy containers/scalars to python and NaN/inf to None."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return _num(obj)
    return obj


def _mean_of(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def _defined(y: np.ndarray) -> bool:
    """AUROC (and ROC curves) need at least one positive and one negative."""
    n_pos = int(y.sum())
    return 0 < n_pos < y.shape[0]


# --------------------------------------------------------------------------------------------------
# AUROC: rank-based (Mann–Whitney U), with weights so that bootstrap resamples are just count vectors


class _RankedClass:
    """One class's scores arranged for repeated weighted AUROC (bootstrap resamples are weight vectors).

    AUROC = P(score_pos > score_neg) + 0.5 P(tie): Mann–Whitney U with average ranks for ties. With
    negatives sorted by score, the negative weight below (and tied with) each positive is a lookup in
    the cumulative sum of negative weights, so a resample costs one gather + one cumsum over the
    negatives. With integer weights the arithmetic is exact.
    """

    def __init__(self, y: np.ndarray, score: np.ndarray) -> None:
        y = np.asarray(y).astype(bool).ravel()
        score = np.asarray(score, dtype=np.float64).ravel()
        neg_idx = np.flatnonzero(~y)
        self.neg_order = neg_idx[np.argsort(score[neg_idx], kind="stable")]
        neg_sorted = score[self.neg_order]
        self.pos_idx = np.flatnonzero(y)
        pos_scores = score[self.pos_idx]
        self.below = np.searchsorted(neg_sorted, pos_scores, side="left")
        self.up_to = np.searchsorted(neg_sorted, pos_scores, side="right")
        self.defined = self.pos_idx.size > 0 and self.neg_order.size > 0

    def auroc(self, weights: np.ndarray) -> np.ndarray:
        """AUROC for each row of `weights` [B, N] (multiplicity of each image); NaN if undefined."""
        b = weights.shape[0]
        if not self.defined:
            return np.full(b, np.nan)
        neg_w = weights[:, self.neg_order]
        acc = np.int64 if np.issubdtype(weights.dtype, np.integer) else np.float64
        cum = np.zeros((b, neg_w.shape[1] + 1), dtype=acc)
        np.cumsum(neg_w, axis=1, dtype=acc, out=cum[:, 1:])
        pos_w = weights[:, self.pos_idx].astype(acc)
        # Twice the pairs won: 2 * (negatives strictly below) + (negatives tied), per positive.
        twice_won = (pos_w * (cum[:, self.below] + cum[:, self.up_to])).sum(axis=1)
        n_pos = pos_w.sum(axis=1)
        n_neg = cum[:, -1]
        with np.errstate(invalid="ignore", divide="ignore"):
            auc = twice_won / (2.0 * n_pos * n_neg)
        auc[(n_pos == 0) | (n_neg == 0)] = np.nan
        return auc


def fast_auroc(y_true: Any, y_score: Any, weights: Any | None = None) -> float | None:
    """AUROC of one class by ranks (equals sklearn's roc_auc_score); None without positives or negatives.

    `weights` (optional, per image) are multiplicities, as in a bootstrap resample.
    """
    y = np.asarray(y_true).ravel()
    score = np.asarray(y_score, dtype=np.float64).ravel()
    if y.shape != score.shape:
        raise MetricsInputError("Labels and scores must have the same length.")
    w = np.ones(y.shape[0], dtype=np.int64) if weights is None else np.asarray(weights).ravel()
    if w.shape != y.shape:
        raise MetricsInputError("Weights must have one value per image.")
    return _num(_RankedClass(y, score).auroc(w[None, :])[0])


def auroc_per_class(y_true: Any, y_prob: Any, labels: Sequence[str] = FINDINGS) -> dict[str, float | None]:
    """AUROC of every class; None for a class with no positives or no negatives."""
    truth, prob, labels = _as_arrays(y_true, y_prob, labels)
    return {label: fast_auroc(truth[:, c], prob[:, c]) for c, label in enumerate(labels)}


def mean_auroc(per_class: Mapping[str, float | None]) -> float | None:
    """Mean over the classes whose AUROC is defined (None if none is)."""
    return _mean_of(per_class.values())


def bootstrap_auroc_samples(
    y_true: Any,
    y_prob: Any,
    labels: Sequence[str] = FINDINGS,
    n_boot: int = 1000,
    seed: int = 0,
    progress: ProgressFn | None = None,
    chunk_size: int = 25,
) -> np.ndarray:
    """AUROC of each class on `n_boot` resamples of the images (with replacement): array [n_boot, C].

    Entries are NaN where a resample has no positive or no negative for that class. Resample b is
    row b of `np.random.default_rng(seed).integers(0, N, size=(n_boot, N))` (whatever `chunk_size`);
    it is held as a count per image, so no data is copied and each class is sorted only once.
    """
    truth, prob, labels = _as_arrays(y_true, y_prob, labels)
    if n_boot < 1:
        raise MetricsInputError("The number of bootstrap resamples must be at least 1.")
    n, n_classes = truth.shape
    rng = np.random.default_rng(seed)
    ranked = [_RankedClass(truth[:, c], prob[:, c]) for c in range(n_classes)]
    out = np.full((n_boot, n_classes), np.nan)
    done = 0
    while done < n_boot:
        b = min(chunk_size, n_boot - done)
        idx = rng.integers(0, n, size=(b, n))
        flat = (idx + (np.arange(b) * n)[:, None]).ravel()
        counts = np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.int32)
        for c, cls in enumerate(ranked):
            if cls.defined:
                out[done : done + b, c] = cls.auroc(counts)
        done += b
        if progress is not None:
            progress(done, n_boot)
    return out


def _percentile_interval(samples: np.ndarray, alpha: float, min_valid: float = 0.5) -> list[float] | None:
    valid = samples[np.isfinite(samples)]
    # An interval from a minority of resamples would be conditioned on a rare event; report none.
    if valid.size == 0 or valid.size < min_valid * samples.size:
        return None
    lo, hi = np.percentile(valid, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return [float(lo), float(hi)]


def bootstrap_auroc_ci(
    y_true: Any,
    y_prob: Any,
    labels: Sequence[str] = FINDINGS,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Percentile bootstrap (over images) confidence intervals of per-class and mean AUROC.

    Returns `{"per_class": {label: [lo, hi] | None}, "mean": [lo, hi] | None, "n_boot", "alpha", "seed"}`.
    A class gets None when its AUROC is undefined on the full data or on most resamples (very rare
    classes). The mean's interval uses, in each resample, the mean over the classes defined on the full
    data (those that happen to be undefined in that resample are skipped).
    """
    if not 0 < alpha < 1:
        raise MetricsInputError("alpha must be between 0 and 1.")
    truth, prob, labels = _as_arrays(y_true, y_prob, labels)
    samples = bootstrap_auroc_samples(truth, prob, labels, n_boot=n_boot, seed=seed, progress=progress)
    per_class = {label: _percentile_interval(samples[:, c], alpha) for c, label in enumerate(labels)}
    defined = [c for c in range(len(labels)) if _defined(truth[:, c])]
    mean_ci = None
    if defined:
        sub = samples[:, defined]
        any_valid = np.isfinite(sub).any(axis=1)
        means = np.full(n_boot, np.nan)
        means[any_valid] = np.nanmean(sub[any_valid], axis=1)
        mean_ci = _percentile_interval(means, alpha)
    return {"per_class": per_class, "mean": mean_ci, "n_boot": n_boot, "alpha": alpha, "seed": seed}


# --------------------------------------------------------------------------------------------------
# Curves (downsampled for dashboards)


def _downsample_indices(x: np.ndarray, y: np.ndarray, max_points: int) -> np.ndarray:
    """Indices of at most `max_points` points spread evenly along the curve's length, endpoints kept."""
    n = x.shape[0]
    if n <= max_points:
        return np.arange(n)
    if max_points < 2:
        raise MetricsInputError("A curve needs at least 2 points.")
    step = np.hypot(np.diff(x), np.diff(y))
    arc = np.r_[0.0, np.cumsum(step)]
    if arc[-1] == 0:
        return np.array([0, n - 1])
    targets = np.linspace(0.0, arc[-1], max_points)
    idx = np.searchsorted(arc, targets, side="left").clip(0, n - 1)
    return np.unique(np.r_[0, idx, n - 1])


def roc_curve_points(
    y_true: Any, y_prob: Any, labels: Sequence[str] = FINDINGS, max_points: int = 200
) -> dict[str, dict[str, list] | None]:
    """ROC curve per class: `{"fpr", "tpr", "thresholds", "auroc"}` with at most `max_points` points.

    `thresholds[i]` gives (fpr[i], tpr[i]) with `prob >= thresholds[i]`. The first point (0, 0) has
    threshold None ("nothing predicted positive"; sklearn uses +inf, which JSON cannot carry).
    None for a class without positives or negatives.
    """
    truth, prob, labels = _as_arrays(y_true, y_prob, labels)
    out: dict[str, dict[str, list] | None] = {}
    for c, label in enumerate(labels):
        if not _defined(truth[:, c]):
            out[label] = None
            continue
        fpr, tpr, thr = roc_curve(truth[:, c], prob[:, c])
        keep = _downsample_indices(fpr, tpr, max_points)
        out[label] = {
            "fpr": [float(v) for v in fpr[keep]],
            "tpr": [float(v) for v in tpr[keep]],
            "thresholds": [_num(v) for v in thr[keep]],
            "auroc": fast_auroc(truth[:, c], prob[:, c]),
        }
    return out


def pr_curve_points(
    y_true: Any, y_prob: Any, labels: Sequence[str] = FINDINGS, max_points: int = 200
) -> dict[str, dict[str, Any] | None]:
    """Precision–recall curve per class: `{"precision", "recall", "thresholds", "average_precision"}`.

    Points are in sklearn's order (recall decreasing); the last point (recall 0, precision 1) has
    threshold None. None for a class without positives.
    """
    truth, prob, labels = _as_arrays(y_true, y_prob, labels)
    out: dict[str, dict[str, Any] | None] = {}
    for c, label in enumerate(labels):
        if truth[:, c].sum() == 0:
            out[label] = None
            continue
        precision, recall, thr = precision_recall_curve(truth[:, c], prob[:, c])
        thr_full = np.r_[thr, np.nan]
        keep = _downsample_indices(recall, precision, max_points)
        out[label] = {
            "precision": [float(v) for v in precision[keep]],
            "recall": [float(v) for v in recall[keep]],
            "thresholds": [_num(v) for v in thr_full[keep]],
            "average_precision": _num(average_precision_score(truth[:, c], prob[:, c])),
            "prevalence": float(truth[:, c].mean()),
        }
    return out


# --------------------------------------------------------------------------------------------------
# Operating thresholds


def youden_thresholds(y_true: Any, y_prob: Any, labels: Sequence[str] = FINDINGS) -> dict[str, float | None]:
    """Per class, the threshold maximising Youden's J = TPR - FPR (ties: the highest such threshold).

    None when the class has no positives or negatives, or when no threshold beats J = 0.
    """
    truth, prob, labels = _as_arrays(y_true, y_prob, labels)
    out: dict[str, float | None] = {}
    for c, label in enumerate(labels):
        if not _defined(truth[:, c]):
            out[label] = None
            continue
        fpr, tpr, thr = roc_curve(truth[:, c], prob[:, c], drop_intermediate=False)
        j = tpr - fpr
        # Thresholds decrease along the curve, so the first (near-)maximum is the highest threshold;
        # the tolerance keeps equal J values equal despite rounding (1 - 1/3 vs 2/3).
        best = int(np.flatnonzero(j >= j.max() - 1e-12)[0])
        out[label] = _num(thr[best]) if j[best] > 1e-12 else None
    return out


def sensitivity_thresholds(
    y_true: Any, y_prob: Any, labels: Sequence[str] = FINDINGS, target: float = 0.9
) -> dict[str, float | None]:
    """Per class, the highest threshold whose sensitivity (recall) is at least `target`.

    None for a class without positives.
    """
    if not 0 < target <= 1:
        raise MetricsInputError("The target sensitivity must be in (0, 1].")
    truth, prob, labels = _as_arrays(y_true, y_prob, labels)
    out: dict[str, float | None] = {}
    for c, label in enumerate(labels):
        y = truth[:, c]
        n_pos = int(y.sum())
        if n_pos == 0:
            out[label] = None
            continue
        # Sensitivity at threshold t = #(positive scores >= t) / n_pos: the k-th highest positive
        # score, k = ceil(target * n_pos), is the highest threshold that reaches the target.
        k = max(1, math.ceil(target * n_pos - 1e-9))
        pos_scores = np.sort(prob[y == 1, c])[::-1]
        out[label] = float(pos_scores[k - 1])
    return out


def _threshold_map(thresholds: Thresholds, labels: Sequence[str]) -> dict[str, float | None]:
    if isinstance(thresholds, int | float | np.floating | np.integer):
        return {label: float(thresholds) for label in labels}
    if isinstance(thresholds, Mapping):
        missing = [label for label in labels if label not in thresholds]
        if missing:
            raise MetricsInputError(f"No threshold was given for {', '.join(missing)}.")
        return {label: _num(thresholds[label]) for label in labels}
    values = list(thresholds)
    if len(values) != len(labels):
        raise MetricsInputError(f"{len(values)} thresholds were given for {len(labels)} classes.")
    return {label: _num(v) for label, v in zip(labels, values, strict=True)}


def precision_recall_f1_at(
    y_true: Any, y_prob: Any, thresholds: Thresholds, labels: Sequence[str] = FINDINGS
) -> dict[str, Any]:
    """Per-class precision, recall (sensitivity), F1, specificity and confusion counts at thresholds.

    `thresholds`: a mapping label -> threshold, a sequence aligned with `labels`, or one number for all.
    Positive means `prob >= threshold`. A class with threshold None gets None for all rates.
    Undefined rates are None rather than 0 (precision with nothing predicted positive, recall without
    positives, specificity without negatives, F1 when TP+FP+FN = 0), and the means
    (`mean_precision`, `mean_recall`, `mean_f1`, `mean_specificity`) are over classes with values.
    """
    truth, prob, labels = _as_arrays(y_true, y_prob, labels)
    thr = _threshold_map(thresholds, labels)
    result: dict[str, Any] = {
        key: {} for key in ("thresholds", "precision", "recall", "f1", "specificity", "support", "confusion")
    }
    for c, label in enumerate(labels):
        y = truth[:, c].astype(bool)
        result["thresholds"][label] = thr[label]
        result["support"][label] = int(y.sum())
        if thr[label] is None:
            for key in ("precision", "recall", "f1", "specificity", "confusion"):
                result[key][label] = None
            continue
        pred = prob[:, c] >= thr[label]
        tp = int(np.sum(pred & y))
        fp = int(np.sum(pred & ~y))
        fn = int(np.sum(~pred & y))
        tn = int(np.sum(~pred & ~y))
        result["precision"][label] = tp / (tp + fp) if tp + fp else None
        result["recall"][label] = tp / (tp + fn) if tp + fn else None
        result["specificity"][label] = tn / (tn + fp) if tn + fp else None
        result["f1"][label] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None
        result["confusion"][label] = {"tp": tp, "fp": fp, "fn": fn, "tn": tn}
    for key in ("precision", "recall", "f1", "specificity"):
        result[f"mean_{key}"] = _mean_of(result[key].values())
    return result


def choose_thresholds(
    y_true: Any,
    y_prob: Any,
    labels: Sequence[str] = FINDINGS,
    method: str = "youden",
    *,
    sensitivity_target: float = 0.9,
    fixed_threshold: float = 0.5,
) -> dict[str, float | None]:
    """Thresholds by name: "youden", "sensitivity" (at `sensitivity_target`) or "fixed"."""
    if method == "youden":
        return youden_thresholds(y_true, y_prob, labels)
    if method == "sensitivity":
        return sensitivity_thresholds(y_true, y_prob, labels, target=sensitivity_target)
    if method == "fixed":
        return {label: float(fixed_threshold) for label in labels}
    raise _unknown_method(method)


def _unknown_method(method: str) -> MetricsInputError:
    return MetricsInputError(
        f"Unknown threshold method {method!r}; use one of: {', '.join(THRESHOLD_METHODS)}."
    )


# --------------------------------------------------------------------------------------------------
# The whole report


def image_set_fingerprint(image_ids: Iterable[str]) -> str:
    """sha256 of the sorted image ids: tells whether two reports were computed on the same images."""
    digest = hashlib.sha256()
    for image_id in sorted(str(i) for i in image_ids):
        digest.update(image_id.encode())
        digest.update(b"\n")
    return digest.hexdigest()


def evaluation_report(
    y_true: Any,
    y_prob: Any,
    labels: Sequence[str] = FINDINGS,
    *,
    model_name: str,
    split: str,
    image_ids: Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    threshold_method: str = "youden",
    thresholds: Thresholds | None = None,
    sensitivity_target: float = 0.9,
    fixed_threshold: float = 0.5,
    max_curve_points: int = 200,
    localization: Mapping[str, Any] | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Everything a dashboard shows about one model on one split, as a JSON-serialisable dict.

    Thresholds: if `thresholds` is given (e.g. chosen on the validation split) they are used as they
    are and `thresholds_source` is "given"; otherwise they are chosen on this data with
    `threshold_method` and `thresholds_source` is "this_data" (optimistic for a test split).
    `n_boot=0` skips the bootstrap (CIs are None). `progress(done, total)` follows the bootstrap.
    """
    truth, prob, labels = _as_arrays(y_true, y_prob, labels)
    if image_ids is not None and len(image_ids) != truth.shape[0]:
        raise MetricsInputError(f"{len(image_ids)} image ids were given for {truth.shape[0]} images.")
    if thresholds is None and threshold_method not in THRESHOLD_METHODS:
        raise _unknown_method(threshold_method)

    auroc = auroc_per_class(truth, prob, labels)
    if n_boot > 0:
        ci = bootstrap_auroc_ci(truth, prob, labels, n_boot=n_boot, seed=seed, alpha=alpha, progress=progress)
    else:
        ci = {"per_class": {label: None for label in labels}, "mean": None}

    if thresholds is None:
        chosen = choose_thresholds(
            truth,
            prob,
            labels,
            threshold_method,
            sensitivity_target=sensitivity_target,
            fixed_threshold=fixed_threshold,
        )
        source = "this_data"
    else:
        chosen = _threshold_map(thresholds, labels)
        source = "given"
    at = precision_recall_f1_at(truth, prob, chosen, labels)

    report = {
        "model": model_name,
        "split": split,
        "labels": labels,
        "n_images": int(truth.shape[0]),
        "image_set_sha256": image_set_fingerprint(image_ids) if image_ids is not None else None,
        "prevalence": {label: float(truth[:, c].mean()) for c, label in enumerate(labels)},
        "support": at["support"],
        "auroc": auroc,
        "mean_auroc": mean_auroc(auroc),
        "auroc_ci": ci["per_class"],
        "mean_auroc_ci": ci["mean"],
        "ci_level": 1 - alpha,
        "n_boot": int(n_boot),
        "seed": seed,
        "threshold_method": threshold_method,
        "thresholds_source": source,
        "sensitivity_target": sensitivity_target if threshold_method == "sensitivity" else None,
        "thresholds": at["thresholds"],
        "precision": at["precision"],
        "recall": at["recall"],
        "f1": at["f1"],
        "specificity": at["specificity"],
        "confusion": at["confusion"],
        "mean_precision": at["mean_precision"],
        "mean_recall": at["mean_recall"],
        "mean_f1": at["mean_f1"],
        "mean_specificity": at["mean_specificity"],
        "roc": roc_curve_points(truth, prob, labels, max_points=max_curve_points),
        "pr": pr_curve_points(truth, prob, labels, max_points=max_curve_points),
        "localization": dict(localization) if localization is not None else None,
    }
    return to_jsonable(report)
