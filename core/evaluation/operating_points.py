"""Operating thresholds chosen on a calibration split and reported on a different one.

Choosing a threshold and reporting precision/recall on the same images flatters the model; here the
threshold per finding comes from the calibration split (Youden's J, or the highest threshold reaching a
target sensitivity, from `core.evaluation.metrics`) and the figures from the report split. Every
per-finding figure
carries its n_pos and a too_few flag (fewer than 10 positives on either split).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from core.errors import UserError
from core.labels import FINDINGS

MIN_POSITIVES = 10
METHODS = ("youden", "sensitivity")


class OperatingPointError(UserError, ValueError):
    """Thresholds cannot be chosen as asked (one human sentence)."""


def operating_points(
    y_calibration: Any,
    p_calibration: Any,
    y_report: Any,
    p_report: Any,
    labels: Sequence[str] = FINDINGS,
    *,
    method: str = "youden",
    sensitivity_target: float = 0.9,
    calibration_split: str = "val",
    report_split: str = "test",
    calibration_ids: Sequence[str] | None = None,
    report_ids: Sequence[str] | None = None,
    min_positives: int = MIN_POSITIVES,
) -> dict[str, Any]:
    """Thresholds per finding from the calibration split, precision/recall/F1 at them on the report split.

    Raises when the two splits share a name or (given the ids) an image.
    """
    from core.evaluation.metrics import precision_recall_f1_at, sensitivity_thresholds, youden_thresholds

    if method not in METHODS:
        raise OperatingPointError(f"Unknown threshold method '{method}': use youden or sensitivity.")
    if calibration_split == report_split:
        raise OperatingPointError("Thresholds must be chosen on a split other than the one reported.")
    if calibration_ids is not None and report_ids is not None:
        shared = set(calibration_ids) & set(report_ids)
        if shared:
            raise OperatingPointError(
                f"The calibration and report splits share {len(shared)} image(s) (e.g. {sorted(shared)[0]})."
            )
    labels = list(labels)
    y_cal, y_rep = np.asarray(y_calibration), np.asarray(y_report)
    if method == "youden":
        thresholds = youden_thresholds(y_cal, p_calibration, labels)
        how = f"Youden's J on {calibration_split}"
    else:
        thresholds = sensitivity_thresholds(y_cal, p_calibration, labels, target=sensitivity_target)
        how = f"the highest threshold reaching sensitivity {sensitivity_target:g} on {calibration_split}"
    at = precision_recall_f1_at(y_rep, p_report, thresholds, labels)
    classes = {}
    for c, label in enumerate(labels):
        n_pos_cal, n_pos_rep = int(y_cal[:, c].sum()), int(y_rep[:, c].sum())
        classes[label] = {
            "threshold": thresholds[label],
            "precision": at["precision"][label],
            "recall": at["recall"][label],
            "f1": at["f1"][label],
            "specificity": at["specificity"][label],
            "n_pos": n_pos_rep,
            "n_pos_calibration": n_pos_cal,
            "too_few": min(n_pos_rep, n_pos_cal) < min_positives,
        }
    return {
        "method": method,
        "sensitivity_target": sensitivity_target if method == "sensitivity" else None,
        "chosen_on": {"split": calibration_split, "n_images": int(y_cal.shape[0])},
        "reported_on": {"split": report_split, "n_images": int(y_rep.shape[0])},
        "description": (
            f"Thresholds chosen by {how} ({y_cal.shape[0]} images), reported on {report_split} "
            f"({y_rep.shape[0]} images)."
        ),
        "thresholds": thresholds,
        "classes": classes,
    }
