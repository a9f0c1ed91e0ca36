"""core.evaluation.metrics against scikit-learn, hand-built cases and the real reference predictions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from core.evaluation.metrics import (
    MetricsInputError,
    _percentile_interval,
    auroc_per_class,
    bootstrap_auroc_ci,
    bootstrap_auroc_samples,
    evaluation_report,
    fast_auroc,
    image_set_fingerprint,
    mean_auroc,
    pr_curve_points,
    precision_recall_f1_at,
    roc_curve_points,
    sensitivity_thresholds,
    youden_thresholds,
)
from core.labels import FINDINGS

LABELS3 = ["a", "b", "c"]


def synthetic(n: int, n_classes: int = 3, seed: int = 0, decimals: int | None = 2):
    """Informative but imperfect scores; rounding creates many ties."""
    rng = np.random.default_rng(seed)
    prevalence = np.linspace(0.05, 0.4, n_classes)
    y = (rng.random((n, n_classes)) < prevalence).astype(int)
    p = 1 / (1 + np.exp(-(1.2 * y + rng.normal(size=(n, n_classes)) - 1.5)))
    if decimals is not None:
        p = p.round(decimals)
    return y, p


# ----------------------------------------------------------------------------------------------- AUROC


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("decimals", [None, 1, 2])
def test_fast_auroc_equals_sklearn_with_and_without_ties(seed, decimals):
    y, p = synthetic(400 + 37 * seed, seed=seed, decimals=decimals)
    ours = auroc_per_class(y, p, LABELS3)
    for c, label in enumerate(LABELS3):
        assert ours[label] == pytest.approx(roc_auc_score(y[:, c], p[:, c]), abs=1e-9)


def test_fast_auroc_extremes_and_all_tied():
    y = np.array([0, 0, 1, 1])
    assert fast_auroc(y, [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert fast_auroc(y, [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert fast_auroc(y, [0.5, 0.5, 0.5, 0.5]) == 0.5


def test_weighted_auroc_equals_sklearn_on_repeated_rows():
    y, p = synthetic(300, seed=4)
    weights = np.random.default_rng(1).integers(0, 4, size=300)
    idx = np.repeat(np.arange(300), weights)
    assert fast_auroc(y[:, 1], p[:, 1], weights) == pytest.approx(
        roc_auc_score(y[idx, 1], p[idx, 1]), abs=1e-9
    )


def test_class_without_positives_or_negatives_is_none_and_left_out_of_the_mean():
    y, p = synthetic(200, seed=1)
    y[:, 0] = 0
    y[:, 2] = 1
    per_class = auroc_per_class(y, p, LABELS3)
    assert per_class["a"] is None and per_class["c"] is None
    assert mean_auroc(per_class) == pytest.approx(roc_auc_score(y[:, 1], p[:, 1]))
    assert mean_auroc({"a": None}) is None


# ------------------------------------------------------------------------------------------- bootstrap


def test_bootstrap_resamples_are_the_documented_index_draws():
    y, p = synthetic(150, seed=2)
    samples = bootstrap_auroc_samples(y, p, LABELS3, n_boot=20, seed=3, chunk_size=6)
    idx = np.random.default_rng(3).integers(0, 150, size=(20, 150))
    for b in range(20):
        for c in range(3):
            yb, pb = y[idx[b], c], p[idx[b], c]
            expected = roc_auc_score(yb, pb) if 0 < yb.sum() < len(yb) else np.nan
            np.testing.assert_allclose(samples[b, c], expected, atol=1e-9)


def test_bootstrap_ci_contains_estimate_narrows_with_data_and_is_reproducible():
    widths = []
    for n in (300, 6000):
        y, p = synthetic(n, seed=5)
        point = auroc_per_class(y, p, LABELS3)
        ci = bootstrap_auroc_ci(y, p, LABELS3, n_boot=300, seed=0)
        for label in LABELS3:
            lo, hi = ci["per_class"][label]
            assert lo < point[label] < hi
        lo, hi = ci["mean"]
        assert lo < mean_auroc(point) < hi
        widths.append(np.mean([hi - lo for lo, hi in ci["per_class"].values()]))
    assert widths[1] < widths[0] / 2  # ~1/sqrt(20) expected
    assert bootstrap_auroc_ci(y, p, LABELS3, n_boot=50, seed=7) == bootstrap_auroc_ci(
        y, p, LABELS3, n_boot=50, seed=7
    )


def test_bootstrap_ci_none_for_undefined_class_and_reports_progress():
    y, p = synthetic(200, seed=6)
    y[:, 0] = 0
    calls = []
    ci = bootstrap_auroc_ci(y, p, LABELS3, n_boot=60, progress=lambda d, t: calls.append((d, t)))
    assert ci["per_class"]["a"] is None
    assert ci["per_class"]["b"] is not None and ci["mean"] is not None
    assert calls[-1] == (60, 60) and all(t == 60 for _, t in calls)


def test_bootstrap_ci_with_a_single_positive_and_mostly_undefined_resamples():
    y, p = synthetic(400, seed=8)
    y[:, 2] = 0
    y[9, 2] = 1
    p[9, 2] = p[:, 2].max() + 0.01
    # Resamples holding image 9 (~63%) all score 1.0; those without it are undefined and skipped.
    ci = bootstrap_auroc_ci(y, p, LABELS3, n_boot=200)
    assert ci["per_class"]["c"] == [1.0, 1.0]
    mostly_undefined = np.r_[np.full(60, np.nan), np.linspace(0.6, 0.8, 40)]
    assert _percentile_interval(mostly_undefined, 0.05) is None
    assert _percentile_interval(mostly_undefined[20:], 0.05) == pytest.approx([0.6050, 0.7950], abs=1e-3)


# ---------------------------------------------------------------------------------------------- curves


def test_roc_points_equal_sklearn_when_not_downsampled():
    y, p = synthetic(500, seed=9)
    curves = roc_curve_points(y, p, LABELS3, max_points=10_000)
    for c, label in enumerate(LABELS3):
        fpr, tpr, thr = roc_curve(y[:, c], p[:, c])
        assert curves[label]["fpr"] == pytest.approx(fpr.tolist())
        assert curves[label]["tpr"] == pytest.approx(tpr.tolist())
        assert curves[label]["thresholds"][0] is None  # sklearn's +inf
        assert curves[label]["thresholds"][1:] == pytest.approx(thr[1:].tolist())


def test_roc_points_downsampled_keep_endpoints_and_order():
    y, p = synthetic(20_000, seed=10, decimals=None)
    curve = roc_curve_points(y, p, LABELS3, max_points=50)["c"]
    assert 2 < len(curve["fpr"]) <= 50
    assert (curve["fpr"][0], curve["tpr"][0]) == (0.0, 0.0)
    assert (curve["fpr"][-1], curve["tpr"][-1]) == (1.0, 1.0)
    assert np.all(np.diff(curve["fpr"]) >= 0) and np.all(np.diff(curve["tpr"]) >= 0)
    assert len(curve["thresholds"]) == len(curve["fpr"])


def test_pr_points_average_precision_and_endpoints():
    y, p = synthetic(20_000, seed=11, decimals=None)
    y[:, 0] = 0
    curves = pr_curve_points(y, p, LABELS3, max_points=40)
    assert curves["a"] is None
    for c, label in enumerate(LABELS3[1:], start=1):
        curve = curves[label]
        assert curve["average_precision"] == pytest.approx(average_precision_score(y[:, c], p[:, c]))
        assert 2 < len(curve["precision"]) <= 40
        assert curve["recall"][0] == 1.0 and curve["recall"][-1] == 0.0
        assert curve["precision"][-1] == 1.0 and curve["thresholds"][-1] is None
        assert curve["prevalence"] == pytest.approx(y[:, c].mean())


# ------------------------------------------------------------------------------------------ thresholds


def test_youden_threshold_hand_built():
    y = np.array([[0], [0], [0], [1], [1], [1]])
    separated = np.array([[0.1], [0.2], [0.3], [0.35], [0.7], [0.8]])
    assert youden_thresholds(y, separated, ["x"]) == {"x": 0.35}
    # J = 2/3 at both 0.5 and 0.3; ties go to the highest threshold.
    y = np.array([[0], [0], [1], [0], [1], [1]])
    tied = np.array([[0.1], [0.2], [0.3], [0.4], [0.5], [0.6]])
    assert youden_thresholds(y, tied, ["x"]) == {"x": 0.5}
    # An inverted score has no threshold better than chance.
    assert youden_thresholds(y, 1 - tied, ["x"]) == {"x": None}


def test_youden_threshold_maximises_j_by_brute_force():
    y, p = synthetic(800, seed=12)
    chosen = youden_thresholds(y, p, LABELS3)
    for c, label in enumerate(LABELS3):
        pos, neg = y[:, c] == 1, y[:, c] == 0

        def j(t, c=c, pos=pos, neg=neg):
            return np.mean(p[pos, c] >= t) - np.mean(p[neg, c] >= t)

        best = max(j(t) for t in np.unique(p[:, c]))
        assert j(chosen[label]) == pytest.approx(best)


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 1.0])
def test_sensitivity_threshold_is_the_highest_reaching_the_target(target):
    y, p = synthetic(700, seed=13)
    chosen = sensitivity_thresholds(y, p, LABELS3, target=target)
    for c, label in enumerate(LABELS3):
        t = chosen[label]
        pos_scores = p[y[:, c] == 1, c]
        assert np.mean(pos_scores >= t) >= target
        higher = np.unique(p[:, c])[np.unique(p[:, c]) > t]
        if higher.size:
            assert np.mean(pos_scores >= higher[0]) < target


def test_sensitivity_threshold_none_without_positives_and_target_checked():
    y, p = synthetic(100, seed=14)
    y[:, 1] = 0
    assert sensitivity_thresholds(y, p, LABELS3)["b"] is None
    with pytest.raises(MetricsInputError):
        sensitivity_thresholds(y, p, LABELS3, target=0)


def test_precision_recall_f1_at_thresholds_equal_sklearn():
    y, p = synthetic(900, seed=15)
    thresholds = {"a": 0.2, "b": 0.35, "c": 0.5}
    result = precision_recall_f1_at(y, p, thresholds, LABELS3)
    for c, label in enumerate(LABELS3):
        pred = (p[:, c] >= thresholds[label]).astype(int)
        assert result["precision"][label] == pytest.approx(precision_score(y[:, c], pred))
        assert result["recall"][label] == pytest.approx(recall_score(y[:, c], pred))
        assert result["f1"][label] == pytest.approx(f1_score(y[:, c], pred))
        assert result["specificity"][label] == pytest.approx(recall_score(1 - y[:, c], 1 - pred))
        assert result["support"][label] == int(y[:, c].sum())
        assert sum(result["confusion"][label].values()) == len(y)
    assert result["mean_precision"] == pytest.approx(np.mean(list(result["precision"].values())))
    assert result["mean_recall"] == pytest.approx(np.mean(list(result["recall"].values())))
    assert result["mean_f1"] == pytest.approx(np.mean(list(result["f1"].values())))


def test_threshold_is_inclusive_and_undefined_rates_are_none():
    y = np.array([[1, 0], [0, 0], [1, 0]])
    p = np.array([[0.5, 0.9], [0.4, 0.1], [0.6, 0.2]])
    result = precision_recall_f1_at(y, p, [0.5, 0.95], ["x", "z"])
    assert result["recall"]["x"] == 1.0 and result["precision"]["x"] == 1.0  # 0.5 >= 0.5 is positive
    assert result["precision"]["z"] is None  # nothing predicted positive
    assert result["recall"]["z"] is None  # no positives
    assert result["f1"]["z"] is None and result["specificity"]["z"] == 1.0
    assert result["mean_precision"] == 1.0  # over classes with values only
    one_number = precision_recall_f1_at(y, p, 0.5, ["x", "z"])
    assert one_number["thresholds"] == {"x": 0.5, "z": 0.5}


# --------------------------------------------------------------------------------------------- report


REPORT_KEYS = {
    "model", "split", "n_images", "auroc", "auroc_ci", "mean_auroc", "mean_auroc_ci", "thresholds",
    "threshold_method", "precision", "recall", "f1", "mean_precision", "mean_recall", "mean_f1",
    "support", "roc", "pr", "localization",
}  # fmt: skip


def test_evaluation_report_is_strict_json_and_complete():
    y, p = synthetic(600, n_classes=14, seed=16)
    y[:, 13] = 0  # a finding absent from this split (Hernia is rare)
    p = p.astype(np.float32)  # models emit float32
    ids = [f"{i:08d}_000.png" for i in range(600)]
    localization = {"overall": {"n_boxes": 3}}
    report = evaluation_report(
        y, p, model_name="demo", split="test", image_ids=ids, n_boot=100, localization=localization
    )
    text = json.dumps(report, allow_nan=False)
    assert json.loads(text) == report
    assert REPORT_KEYS <= set(report)
    assert report["n_images"] == 600 and report["labels"] == list(FINDINGS)
    assert report["auroc"]["Hernia"] is None and report["auroc_ci"]["Hernia"] is None
    assert report["roc"]["Hernia"] is None and report["pr"]["Hernia"] is None
    assert report["support"]["Hernia"] == 0
    assert report["mean_auroc"] == pytest.approx(np.mean([v for v in report["auroc"].values() if v]))
    assert report["thresholds"] == youden_thresholds(y, p)
    assert report["thresholds_source"] == "this_data"
    assert report["localization"] == localization
    assert report["image_set_sha256"] == image_set_fingerprint(reversed(ids))


def test_evaluation_report_uses_given_thresholds():
    y, p = synthetic(300, seed=17)
    given = {"a": 0.3, "b": 0.4, "c": 0.5}
    report = evaluation_report(y, p, LABELS3, model_name="m", split="test", thresholds=given, n_boot=0)
    assert report["thresholds"] == given and report["thresholds_source"] == "given"
    assert report["mean_auroc_ci"] is None
    expected = precision_recall_f1_at(y, p, given, LABELS3)
    assert report["mean_f1"] == expected["mean_f1"]
    sens = evaluation_report(
        y, p, LABELS3, model_name="m", split="val", n_boot=0, threshold_method="sensitivity"
    )
    assert all(r >= 0.9 for r in sens["recall"].values())


@pytest.mark.parametrize(
    ("y", "p", "labels"),
    [
        (np.zeros((4, 3)), np.zeros((4, 2)), LABELS3),  # shape mismatch
        (np.zeros((4, 3)), np.zeros((4, 3)), ["a", "b"]),  # label count
        (np.full((4, 3), 0.5), np.zeros((4, 3)), LABELS3),  # soft labels
        (np.zeros((4, 3)), np.full((4, 3), np.nan), LABELS3),  # NaN scores
        (np.zeros((0, 3)), np.zeros((0, 3)), LABELS3),  # nothing to evaluate
    ],
)
def test_bad_inputs_raise_one_sentence_errors(y, p, labels):
    with pytest.raises(MetricsInputError) as info:
        auroc_per_class(y, p, labels)
    message = str(info.value)
    assert message.endswith(".") and "\n" not in message


def test_report_rejects_unknown_method_and_wrong_id_count():
    y, p = synthetic(50, seed=18)
    with pytest.raises(MetricsInputError):
        evaluation_report(y, p, LABELS3, model_name="m", split="s", n_boot=0, threshold_method="magic")
    with pytest.raises(MetricsInputError):
        evaluation_report(y, p, LABELS3, model_name="m", split="s", n_boot=0, image_ids=["x"])


# ----------------------------------------------------------------------------------- real predictions


def test_report_on_the_real_reference_chexnet_predictions(sample_dir: Path):
    reference = pd.read_csv(sample_dir / "reference_chexnet_predictions.csv")
    entries = pd.read_csv(
        sample_dir / "Data_Entry_2017_v2020.csv", usecols=["Image Index", "Finding Labels"]
    ).set_index("Image Index")
    findings = entries.loc[reference["Image Index"], "Finding Labels"].str.split("|")
    y = np.array([[label in names for label in FINDINGS] for names in findings], dtype=int)
    p = reference[[f"prob_{label}" for label in FINDINGS]].to_numpy()

    report = evaluation_report(
        y, p, model_name="reproduce-chexnet", split="sample", image_ids=list(reference["Image Index"]),
        n_boot=200,
    )  # fmt: skip
    json.dumps(report, allow_nan=False)
    for c, label in enumerate(FINDINGS):
        assert report["auroc"][label] == pytest.approx(roc_auc_score(y[:, c], p[:, c]), abs=1e-9)
    # A trained CheXNet is clearly better than chance on these images, though below its published 0.84.
    assert 0.7 < report["mean_auroc"] < 0.9
    lo, hi = report["mean_auroc_ci"]
    assert lo < report["mean_auroc"] < hi and hi - lo < 0.1
    # Youden thresholds of a CheXNet sit far below 0.5 (its scores are calibrated to low prevalences).
    assert all(t < 0.5 for t in report["thresholds"].values())
