"""Thresholds chosen on a calibration split and reported on another, with small-number flags."""

from __future__ import annotations

import numpy as np
import pytest

from core.evaluation.metrics import sensitivity_thresholds, youden_thresholds
from core.evaluation.operating_points import OperatingPointError, operating_points


def _data(n: int, seed: int):
    rng = np.random.default_rng(seed)
    y = np.zeros((n, 2), dtype=int)
    y[: n // 3, 0] = 1
    y[:6, 1] = 1  # few positives
    p = np.clip(0.35 * y + rng.random((n, 2)) * 0.65, 0, 1)
    return y, p


def test_thresholds_come_from_the_calibration_split_and_figures_from_the_report_split():
    y_cal, p_cal = _data(150, seed=0)
    y_rep, p_rep = _data(120, seed=1)
    result = operating_points(y_cal, p_cal, y_rep, p_rep, ["A", "B"], calibration_split="val",
                              report_split="test")  # fmt: skip
    chosen = youden_thresholds(y_cal, p_cal, ["A", "B"])
    assert result["thresholds"] == chosen
    assert chosen != youden_thresholds(y_rep, p_rep, ["A", "B"])  # so the split really matters here
    t = chosen["A"]
    predicted = p_rep[:, 0] >= t
    tp = int((predicted & (y_rep[:, 0] == 1)).sum())
    row = result["classes"]["A"]
    assert row["precision"] == pytest.approx(tp / predicted.sum())
    assert row["recall"] == pytest.approx(tp / y_rep[:, 0].sum())
    assert row["n_pos"] == 40 and row["n_pos_calibration"] == 50 and not row["too_few"]
    assert result["classes"]["B"]["too_few"]
    assert result["chosen_on"] == {"split": "val", "n_images": 150}
    assert result["reported_on"] == {"split": "test", "n_images": 120}
    assert result["method"] == "youden" and "Youden's J on val" in result["description"]


def test_target_sensitivity_thresholds():
    y_cal, p_cal = _data(150, seed=2)
    y_rep, p_rep = _data(150, seed=3)
    result = operating_points(y_cal, p_cal, y_rep, p_rep, ["A", "B"], method="sensitivity",
                              sensitivity_target=0.8)  # fmt: skip
    assert result["thresholds"] == sensitivity_thresholds(y_cal, p_cal, ["A", "B"], target=0.8)
    assert result["sensitivity_target"] == 0.8 and "sensitivity 0.8" in result["description"]


def test_the_same_split_or_shared_images_are_refused():
    y, p = _data(60, seed=0)
    with pytest.raises(OperatingPointError, match="other than the one reported"):
        operating_points(y, p, y, p, ["A", "B"], calibration_split="test", report_split="test")
    with pytest.raises(OperatingPointError, match="share 1 image"):
        operating_points(y, p, y, p, ["A", "B"], calibration_ids=["a", "b"], report_ids=["b", "c"])
    with pytest.raises(OperatingPointError, match="Unknown threshold method"):
        operating_points(y, p, y, p, ["A", "B"], method="magic")
