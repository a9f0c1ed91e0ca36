"""Calibration of probabilities: ECE, Brier score, reliability-diagram points and temperature scaling.

ECE uses 10 equal-width bins over [0, 1] (a probability of exactly 1 falls in the last bin): the mean over
bins of |mean predicted - observed rate|, weighted by each bin's share of images. Brier score is the mean
squared difference between probability and 0/1 label. Temperature scaling (Guo et al. 2017) divides a
model's logits by one temperature T > 0, fitted on a calibration split by minimising the negative
log-likelihood over every finding of every image; T > 1 softens an overconfident model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from core.errors import UserError
from core.labels import FINDINGS

N_BINS = 10
MIN_POSITIVES = 10
BINNING = "10 equal-width bins over [0, 1]"
TEMPERATURE_BOUNDS = (0.05, 20.0)


class CalibrationError(UserError, ValueError):
    """Calibration cannot be computed as asked (one human sentence)."""


def _pair(y_true: Any, y_prob: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(y_prob, dtype=np.float64).ravel()
    if y.shape != p.shape or y.size == 0:
        raise CalibrationError("Labels and probabilities must be non-empty and of the same length.")
    if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        raise CalibrationError("Probabilities must be finite numbers between 0 and 1.")
    return y, p


def _bins(p: np.ndarray, n_bins: int) -> np.ndarray:
    return np.minimum((p * n_bins).astype(np.int64), n_bins - 1)


def reliability_points(y_true: Any, y_prob: Any, n_bins: int = N_BINS) -> dict[str, list]:
    """Per non-empty bin: mean predicted probability, observed positive rate, count, and the bin's range."""
    y, p = _pair(y_true, y_prob)
    which = _bins(p, n_bins)
    count = np.bincount(which, minlength=n_bins)
    predicted = np.bincount(which, weights=p, minlength=n_bins)
    positive = np.bincount(which, weights=y, minlength=n_bins)
    used = np.flatnonzero(count)
    return {
        "mean_predicted": (predicted[used] / count[used]).tolist(),
        "observed": (positive[used] / count[used]).tolist(),
        "count": count[used].astype(int).tolist(),
        "bin_low": (used / n_bins).tolist(),
        "bin_high": ((used + 1) / n_bins).tolist(),
    }


def expected_calibration_error(y_true: Any, y_prob: Any, n_bins: int = N_BINS) -> float:
    points = reliability_points(y_true, y_prob, n_bins)
    count = np.asarray(points["count"], dtype=np.float64)
    gap = np.abs(np.asarray(points["mean_predicted"]) - np.asarray(points["observed"]))
    return float((count * gap).sum() / count.sum())


def brier_score(y_true: Any, y_prob: Any) -> float:
    y, p = _pair(y_true, y_prob)
    return float(np.mean((p - y) ** 2))


def calibration_report(
    y_true: Any, y_prob: Any, labels: Sequence[str] = FINDINGS, *, n_bins: int = N_BINS,
    min_positives: int = MIN_POSITIVES,
) -> dict[str, Any]:  # fmt: skip
    """Per finding: ECE, Brier, n, n_pos, too_few and reliability points; means leave too_few out."""
    y, p = np.asarray(y_true), np.asarray(y_prob, dtype=np.float64)
    if y.ndim != 2 or y.shape != p.shape or y.shape[1] != len(labels):
        raise CalibrationError("Labels and probabilities must be [images, findings] arrays of one shape.")
    classes = {}
    for c, label in enumerate(labels):
        n_pos = int(y[:, c].sum())
        classes[label] = {
            "ece": expected_calibration_error(y[:, c], p[:, c], n_bins),
            "brier": brier_score(y[:, c], p[:, c]),
            "n": int(y.shape[0]),
            "n_pos": n_pos,
            "too_few": n_pos < min_positives,
            "reliability": reliability_points(y[:, c], p[:, c], n_bins),
        }
    used = [label for label, v in classes.items() if not v["too_few"]]
    return {
        "binning": BINNING if n_bins == N_BINS else f"{n_bins} equal-width bins over [0, 1]",
        "classes": classes,
        "mean_ece": float(np.mean([classes[k]["ece"] for k in used])) if used else None,
        "mean_brier": float(np.mean([classes[k]["brier"] for k in used])) if used else None,
        "mean_over": used,
        "note": f"Means over the findings with at least {min_positives} positives.",
    }


# --------------------------------------------------------------------------------------------------
# Temperature scaling


def logits_from_probabilities(y_prob: Any, eps: float = 1e-7) -> np.ndarray:
    """Logits back from sigmoid probabilities (clipped to [eps, 1 - eps]), for sources without logits."""
    p = np.clip(np.asarray(y_prob, dtype=np.float64), eps, 1 - eps)
    return np.log(p) - np.log1p(-p)


def apply_temperature(logits: Any, temperature: float) -> np.ndarray:
    """sigmoid(logits / T)."""
    if not temperature > 0:
        raise CalibrationError("The temperature must be a positive number.")
    z = np.asarray(logits, dtype=np.float64) / temperature
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # sigmoid without overflow


def _nll(y: np.ndarray, logits: np.ndarray, temperature: float) -> float:
    z = logits / temperature
    return float(np.mean(np.logaddexp(0.0, z) - y * z))  # binary cross-entropy with logits, stable


@dataclass(frozen=True)
class TemperatureFit:
    temperature: float
    nll_before: float
    nll_after: float
    n_images: int
    split: str
    method: str = "one temperature for all findings, minimising the mean binary NLL (bounded scalar search)"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fit_temperature(y_true: Any, logits: Any, split: str = "calibration") -> TemperatureFit:
    """The temperature that minimises the NLL of sigmoid(logits / T) on a calibration split [N, C]."""
    from scipy.optimize import minimize_scalar

    y = np.asarray(y_true, dtype=np.float64)
    z = np.asarray(logits, dtype=np.float64)
    if y.shape != z.shape or y.size == 0:
        raise CalibrationError("Labels and logits must be non-empty arrays of the same shape.")
    if not np.isfinite(z).all():
        raise CalibrationError("The logits contain NaN or infinite values.")
    if y.min() == y.max():
        raise CalibrationError("Fitting a temperature needs both positive and negative labels.")
    low, high = np.log(TEMPERATURE_BOUNDS[0]), np.log(TEMPERATURE_BOUNDS[1])
    found = minimize_scalar(lambda log_t: _nll(y, z, float(np.exp(log_t))), bounds=(low, high),
                            method="bounded", options={"xatol": 1e-6})  # fmt: skip
    temperature = float(np.exp(found.x))
    return TemperatureFit(
        temperature=temperature,
        nll_before=_nll(y, z, 1.0),
        nll_after=_nll(y, z, temperature),
        n_images=int(y.shape[0]),
        split=split,
    )
