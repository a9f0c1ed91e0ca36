"""Calibration: ECE/Brier/reliability where the answer is known, temperature scaling, the real sample."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import brier_score_loss

from core.evaluation.calibration import (
    CalibrationError,
    apply_temperature,
    brier_score,
    calibration_report,
    expected_calibration_error,
    fit_temperature,
    logits_from_probabilities,
    reliability_points,
)
from core.labels import FINDINGS


def _calibrated(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn with exactly the stated probability: a perfectly calibrated process."""
    rng = np.random.default_rng(seed)
    p = rng.random(n)
    return (rng.random(n) < p).astype(int), p


def test_a_calibrated_process_has_a_small_ece_and_a_diagonal_reliability_diagram():
    y, p = _calibrated(40_000)
    assert expected_calibration_error(y, p) < 0.015
    points = reliability_points(y, p)
    assert len(points["count"]) == 10 and sum(points["count"]) == 40_000
    assert np.allclose(points["mean_predicted"], points["observed"], atol=0.03)
    assert points["bin_low"][0] == 0.0 and points["bin_high"][-1] == 1.0


def test_an_overconfident_model_has_a_large_ece():
    y, p = _calibrated(40_000)
    logits = logits_from_probabilities(p)
    overconfident = apply_temperature(logits, 1 / 3)  # logits times 3
    assert expected_calibration_error(y, overconfident) > 0.1


def test_ece_and_brier_by_hand():
    y = np.array([0, 1, 1, 0, 1])
    p = np.array([0.05, 0.15, 0.95, 0.85, 1.0])  # 1.0 falls in the last bin
    points = reliability_points(y, p)
    assert points["count"] == [1, 1, 1, 2]
    assert points["mean_predicted"] == pytest.approx([0.05, 0.15, 0.85, 0.975])
    assert points["observed"] == pytest.approx([0.0, 1.0, 0.0, 1.0])
    expected = (0.05 + 0.85 + 0.85 + 2 * 0.025) / 5
    assert expected_calibration_error(y, p) == pytest.approx(expected)
    assert brier_score(y, p) == pytest.approx(brier_score_loss(y, p))
    with pytest.raises(CalibrationError):
        brier_score(y, p * 2)


def test_temperature_scaling_recovers_a_known_overconfidence():
    rng = np.random.default_rng(1)
    true_logits = rng.normal(-1.0, 2.0, size=(3000, 4))
    y = (rng.random(true_logits.shape) < 1 / (1 + np.exp(-true_logits))).astype(int)
    fit = fit_temperature(y, 2.5 * true_logits, split="val")
    assert fit.temperature == pytest.approx(2.5, rel=0.08)
    assert fit.nll_after < fit.nll_before and fit.split == "val" and fit.n_images == 3000
    before = expected_calibration_error(y.ravel(), apply_temperature(2.5 * true_logits, 1.0).ravel())
    after = expected_calibration_error(
        y.ravel(), apply_temperature(2.5 * true_logits, fit.temperature).ravel()
    )
    assert after < before / 3
    # An underconfident model gets T < 1.
    assert fit_temperature(y, 0.5 * true_logits).temperature == pytest.approx(0.5, rel=0.08)
    assert set(fit.to_dict()) >= {"temperature", "nll_before", "nll_after", "n_images", "split", "method"}


def test_apply_temperature_one_is_the_sigmoid_and_refuses_nonsense():
    z = np.array([-800.0, -2.0, 0.0, 3.0, 800.0])
    assert apply_temperature(z, 1.0) == pytest.approx(
        [0.0, 1 / (1 + np.exp(2)), 0.5, 1 / (1 + np.exp(-3)), 1.0]
    )
    with pytest.raises(CalibrationError):
        apply_temperature(z, 0.0)
    with pytest.raises(CalibrationError):
        fit_temperature(np.ones((5, 2)), np.zeros((5, 2)))  # no negatives


def test_calibration_report_on_the_real_reference_predictions(sample_dir):
    from core.data.dataset import labels_matrix, load_chestxray14

    ds = load_chestxray14(sample_dir)
    table = pd.read_csv(sample_dir / "reference_chexnet_predictions.csv").set_index("Image Index")
    ids = [i for i in table.index if i in ds.entries.index][:200]
    y = labels_matrix(ds, ids)
    probs = table.loc[ids, [f"prob_{f}" for f in FINDINGS]].to_numpy()
    report = calibration_report(y, probs, FINDINGS)
    assert report["binning"] == "10 equal-width bins over [0, 1]"
    for c, label in enumerate(FINDINGS):
        row = report["classes"][label]
        assert (
            row["n"] == 200 and row["n_pos"] == int(y[:, c].sum()) and row["too_few"] == (row["n_pos"] < 10)
        )
        assert row["brier"] == pytest.approx(brier_score_loss(y[:, c], probs[:, c]))
        assert 0 <= row["ece"] <= 1 and sum(row["reliability"]["count"]) == 200
    used = [k for k, v in report["classes"].items() if not v["too_few"]]
    assert report["mean_over"] == used and 0 < len(used) < 14
    assert report["mean_ece"] == pytest.approx(np.mean([report["classes"][k]["ece"] for k in used]))
