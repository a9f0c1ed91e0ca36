"""Paired comparison of two models scored on the same images: per-finding ΔAUROC with DeLong's test.

DeLong, DeLong & Clarke-Pearson (1988) for correlated ROC curves, computed the fast way of Sun & Xu (2014):
midranks give each positive's and each negative's structural component (V10, V01) in O(N log N), whose
covariances give the variance of each AUROC and the covariance of the two models' AUROCs. For finding c,
var(Δ) = var(A) + var(B) - 2 cov(A, B); the 95% CI is Δ ± 1.96 sd and p is two-sided (normal).
p-values are Holm-adjusted across the findings compared.

Mean ΔAUROC: its CI uses the same structural components summed per image across findings, so the
covariance between findings scored on the same images is included (no bootstrap; for one finding it
equals DeLong's variance exactly). Findings with fewer than `min_positives` positives are marked too_few
and left out of the mean by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.errors import UserError
from core.labels import FINDINGS

MIN_POSITIVES = 10
Z95 = 1.959963984540054  # scipy.stats.norm.ppf(0.975)
MEAN_METHOD = (
    "DeLong structural components summed per image over the findings in the mean (covariance between "
    "findings on the same images included)"
)


class CompareError(UserError, ValueError):
    """Two sets of predictions cannot be compared as asked (one human sentence)."""


@dataclass(frozen=True)
class DelongComponents:
    """One finding's AUROCs for K score vectors on the same images, with their per-image influence."""

    aucs: np.ndarray  # [K]
    covariance: np.ndarray  # [K, K] DeLong covariance of the AUROCs
    influence: np.ndarray  # [K, N] per image; influence @ influence.T == covariance
    n_pos: int
    n_neg: int


def delong(y_true: Any, scores: Any) -> DelongComponents:
    """Fast DeLong for one finding: `y_true` [N] 0/1 with both classes, `scores` [K, N] (or [N])."""
    from scipy.stats import rankdata

    y = np.asarray(y_true).astype(bool).ravel()
    s = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    if s.shape[1] != y.shape[0]:
        raise CompareError("Labels and scores must cover the same images.")
    m, n = int(y.sum()), int((~y).sum())
    if m == 0 or n == 0:
        raise CompareError("DeLong's test needs at least one positive and one negative image.")
    pos, neg = s[:, y], s[:, ~y]
    rank_all = rankdata(np.concatenate([pos, neg], axis=1), axis=1)  # midranks handle ties as 1/2
    rank_pos, rank_neg = rankdata(pos, axis=1), rankdata(neg, axis=1)
    v10 = (rank_all[:, :m] - rank_pos) / n  # per positive: share of negatives scored below it
    v01 = 1.0 - (rank_all[:, m:] - rank_neg) / m  # per negative: share of positives scored above it
    aucs = v10.mean(axis=1)
    influence = np.zeros(s.shape)
    # Scaled so that influence @ influence.T is DeLong's S10/m + S01/n (sample covariances, ddof 1).
    influence[:, y] = (v10 - aucs[:, None]) / np.sqrt(m * max(m - 1, 1))
    influence[:, ~y] = (v01 - aucs[:, None]) / np.sqrt(n * max(n - 1, 1))
    return DelongComponents(aucs, influence @ influence.T, influence, m, n)


def delta_test(variance: float, delta: float) -> tuple[list[float], float]:
    """(95% CI, two-sided p) of a difference with the given variance (normal approximation)."""
    from scipy.stats import norm

    sd = float(np.sqrt(max(variance, 0.0)))
    if sd <= 1e-12:  # identical rankings (or perfect separation by both): no evidence of a difference
        return [delta, delta], 1.0 if abs(delta) < 1e-12 else 0.0
    ci = [max(-1.0, delta - Z95 * sd), min(1.0, delta + Z95 * sd)]
    return ci, float(2 * norm.sf(abs(delta) / sd))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given), capped at 1."""
    p = np.asarray(p_values, dtype=np.float64)
    k = p.size
    order = np.argsort(p, kind="stable")
    adjusted = np.maximum.accumulate((k - np.arange(k)) * p[order]).clip(max=1.0)
    out = np.empty(k)
    out[order] = adjusted
    return out.tolist()


def compare_predictions(
    y_true: Any,
    prob_a: Any,
    prob_b: Any,
    labels: Sequence[str] = FINDINGS,
    *,
    min_positives: int = MIN_POSITIVES,
    include_too_few_in_mean: bool = False,
) -> dict[str, Any]:
    """The paired comparison of scores A and B [N, C] on the same images; delta = B - A.

    Returns `{"n_images", "classes": {label: {auroc_a, auroc_b, delta, ci, p, p_holm, n_pos, n_neg,
    too_few}}, "mean": {auroc_a, auroc_b, delta, ci, n_findings, left_out_too_few, method}, ...}`;
    labels without both classes are left out of "classes" (listed in "omitted").
    """
    y = np.asarray(y_true)
    a, b = np.asarray(prob_a, dtype=np.float64), np.asarray(prob_b, dtype=np.float64)
    labels = list(labels)
    if y.ndim != 2 or y.shape != a.shape or y.shape != b.shape or y.shape[1] != len(labels):
        raise CompareError("Labels and both sets of scores must be [images, findings] arrays of one shape.")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise CompareError("The scores contain NaN or infinite values.")
    classes: dict[str, dict[str, Any]] = {}
    influence: dict[str, np.ndarray] = {}
    omitted = []
    for c, label in enumerate(labels):
        column = y[:, c].astype(bool)
        if column.all() or not column.any():
            omitted.append(label)
            continue
        comp = delong(column, np.stack([a[:, c], b[:, c]]))
        delta = float(comp.aucs[1] - comp.aucs[0])
        var = float(comp.covariance[0, 0] + comp.covariance[1, 1] - 2 * comp.covariance[0, 1])
        ci, p = delta_test(var, delta)
        classes[label] = {
            "auroc_a": float(comp.aucs[0]), "auroc_b": float(comp.aucs[1]), "delta": delta, "ci": ci, "p": p,
            "n_pos": comp.n_pos, "n_neg": comp.n_neg, "too_few": comp.n_pos < min_positives,
        }  # fmt: skip
        influence[label] = comp.influence
    for label, adjusted in zip(classes, holm([v["p"] for v in classes.values()]), strict=True):
        classes[label]["p_holm"] = adjusted
    in_mean = [label for label in classes if include_too_few_in_mean or not classes[label]["too_few"]]
    return {
        "n_images": int(y.shape[0]),
        "classes": classes,
        "mean": _mean_delta(classes, influence, in_mean),
        "omitted": omitted,
        "min_positives": min_positives,
        "method": "DeLong (fast, Sun & Xu 2014), 95% CI, two-sided p, Holm across findings; delta = B - A",
    }


def _mean_delta(
    classes: dict[str, dict[str, Any]], influence: dict[str, np.ndarray], in_mean: list[str]
) -> dict[str, Any]:
    left_out = [label for label in classes if label not in in_mean]
    if not in_mean:
        return {"auroc_a": None, "auroc_b": None, "delta": None, "ci": None, "p": None, "n_findings": 0,
                "left_out_too_few": left_out, "method": MEAN_METHOD}  # fmt: skip
    k = len(in_mean)
    per_image = sum(influence[label][1] - influence[label][0] for label in in_mean) / k
    delta = float(np.mean([classes[label]["delta"] for label in in_mean]))
    ci, p = delta_test(float(per_image @ per_image), delta)
    return {
        "auroc_a": float(np.mean([classes[label]["auroc_a"] for label in in_mean])),
        "auroc_b": float(np.mean([classes[label]["auroc_b"] for label in in_mean])),
        "delta": delta, "ci": ci, "p": p, "n_findings": k, "left_out_too_few": left_out,
        "method": MEAN_METHOD,
    }  # fmt: skip


def auroc_summary(
    y_true: Any, y_prob: Any, labels: Sequence[str] = FINDINGS, *, min_positives: int = MIN_POSITIVES
) -> dict[str, Any]:
    """Per-finding AUROC with n_pos and a too_few flag; the mean leaves too_few findings out and says so."""
    from core.evaluation.metrics import fast_auroc

    y, p = np.asarray(y_true), np.asarray(y_prob, dtype=np.float64)
    per: dict[str, dict[str, Any]] = {}
    for c, label in enumerate(labels):
        n_pos = int(y[:, c].sum())
        per[label] = {
            "auroc": fast_auroc(y[:, c], p[:, c]),
            "n_pos": n_pos,
            "n": int(y.shape[0]),
            "too_few": n_pos < min_positives,
        }
    used = [label for label, v in per.items() if v["auroc"] is not None and not v["too_few"]]
    left_out = [label for label, v in per.items() if v["auroc"] is not None and v["too_few"]]
    mean = float(np.mean([per[label]["auroc"] for label in used])) if used else None
    note = f"Mean over {len(used)} findings with at least {min_positives} positives" + (
        f"; left out as too few: {', '.join(left_out)}." if left_out else "."
    )
    return {"classes": per, "mean_auroc": mean, "mean_over": used, "left_out_too_few": left_out, "note": note}
