"""Paired DeLong comparison: AUROCs against scikit-learn, variances against a slow direct DeLong and a
paired bootstrap on the real reference predictions, Holm, small numbers, and the CLI contract."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from core.evaluation.compare import CompareError, auroc_summary, compare_predictions, delong, holm
from core.evaluation.metrics import bootstrap_auroc_samples
from core.labels import FINDINGS


@pytest.fixture(scope="module")
def reference(sample_dir):
    """(y [550, 14], reference probabilities [550, 14], image ids, Data_Entry rows) of the real sample."""
    from core.data.dataset import labels_matrix, load_chestxray14

    ds = load_chestxray14(sample_dir)
    table = pd.read_csv(sample_dir / "reference_chexnet_predictions.csv").set_index("Image Index")
    ids = [i for i in table.index if i in ds.entries.index]
    probs = table.loc[ids, [f"prob_{f}" for f in FINDINGS]].to_numpy(dtype=np.float64)
    return labels_matrix(ds, ids).astype(np.int8), probs, ids, ds.entries.loc[ids]


def _perturbed(probs: np.ndarray, seed: int = 1, scale: float = 1.0) -> np.ndarray:
    """The same predictions with noise on the logit scale: a correlated but worse second model."""
    rng = np.random.default_rng(seed)
    logits = np.log(probs) - np.log1p(-probs)
    return 1 / (1 + np.exp(-(logits + rng.normal(0, scale, probs.shape))))


def _slow_delong(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """DeLong et al. 1988 straight from the definitions, O(m n): (delta, variance of delta)."""
    pos, neg = y == 1, y == 0

    def psi(scores):  # [m, n] kernel: 1 if positive above negative, 1/2 on ties
        diff = scores[pos][:, None] - scores[neg][None, :]
        return (diff > 0) + 0.5 * (diff == 0)

    ka, kb = psi(a), psi(b)
    m, n = ka.shape
    v10 = np.stack([ka.mean(axis=1), kb.mean(axis=1)])
    v01 = np.stack([ka.mean(axis=0), kb.mean(axis=0)])
    cov = np.cov(v10) / m + np.cov(v01) / n
    return float(kb.mean() - ka.mean()), float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])


def test_delong_aurocs_equal_sklearn_and_variance_equals_the_direct_definition():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    a = np.round(rng.normal(y * 0.8, 1.0), 1)  # rounded: many ties
    b = np.round(0.6 * a + rng.normal(y * 0.5, 0.8), 1)
    comp = delong(y, np.stack([a, b]))
    assert comp.aucs[0] == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert comp.aucs[1] == pytest.approx(roc_auc_score(y, b), abs=1e-12)
    delta, variance = _slow_delong(y, a, b)
    fast_var = comp.covariance[0, 0] + comp.covariance[1, 1] - 2 * comp.covariance[0, 1]
    assert comp.aucs[1] - comp.aucs[0] == pytest.approx(delta, abs=1e-12)
    assert fast_var == pytest.approx(variance, rel=1e-9)
    assert comp.n_pos == int(y.sum()) and comp.n_neg == int((1 - y).sum())


def test_delong_matches_a_paired_bootstrap_on_the_real_reference_predictions(reference):
    y, probs, _, _ = reference
    worse = _perturbed(probs)
    result = compare_predictions(y, probs, worse, FINDINGS, min_positives=10)
    n_boot = 1000
    boot_a = bootstrap_auroc_samples(y, probs, FINDINGS, n_boot=n_boot, seed=3)
    boot_b = bootstrap_auroc_samples(y, worse, FINDINGS, n_boot=n_boot, seed=3)  # same resamples: paired
    boot_delta = boot_b - boot_a
    for c, label in enumerate(FINDINGS):
        row = result["classes"][label]
        assert row["auroc_a"] == pytest.approx(roc_auc_score(y[:, c], probs[:, c]), abs=1e-12)
        assert row["auroc_b"] == pytest.approx(roc_auc_score(y[:, c], worse[:, c]), abs=1e-12)
        assert row["delta"] == pytest.approx(row["auroc_b"] - row["auroc_a"], abs=1e-12)
        if row["n_pos"] >= 30:
            delong_sd = (row["ci"][1] - row["ci"][0]) / (2 * 1.959964)
            boot_sd = np.nanstd(boot_delta[:, c], ddof=1)
            assert delong_sd == pytest.approx(boot_sd, rel=0.25), label
    included = [c for c, label in enumerate(FINDINGS) if not result["classes"][label]["too_few"]]
    boot_mean_sd = np.nanmean(boot_delta[:, included], axis=1).std(ddof=1)
    mean = result["mean"]
    assert (mean["ci"][1] - mean["ci"][0]) / (2 * 1.959964) == pytest.approx(boot_mean_sd, rel=0.25)
    assert mean["n_findings"] == len(included) == 14  # the sample has >= 10 positives of every finding
    # Heavy logit noise makes B clearly worse on average.
    assert mean["delta"] < 0 and mean["ci"][1] < 0 and mean["p"] < 0.001


def test_identical_models_differ_by_nothing(reference):
    y, probs, _, _ = reference
    result = compare_predictions(y, probs, probs.copy(), FINDINGS)
    for row in result["classes"].values():
        assert row["delta"] == 0 and row["ci"] == [0.0, 0.0] and row["p"] == 1.0 and row["p_holm"] == 1.0
    assert result["mean"]["delta"] == 0 and result["mean"]["ci"] == [0.0, 0.0]


def test_holm_adjusts_step_down_and_keeps_the_order():
    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm([0.2, 0.6]) == pytest.approx([0.4, 0.6])
    assert holm([0.9, 0.8, 0.7]) == pytest.approx([1.0, 1.0, 1.0])  # capped at 1, still monotone


def test_findings_without_both_classes_are_omitted_and_too_few_leave_the_mean():
    rng = np.random.default_rng(0)
    n = 200
    y = np.zeros((n, 3), dtype=int)
    y[:60, 0] = 1  # plenty
    y[:4, 1] = 1  # too few positives
    # column 2: no positives at all
    a = rng.random((n, 3))
    b = np.clip(y * 0.5 + rng.random((n, 3)) * 0.5, 0, 1)
    result = compare_predictions(y, a, b, ["A", "B", "C"], min_positives=10)
    assert set(result["classes"]) == {"A", "B"} and result["omitted"] == ["C"]
    assert result["classes"]["B"]["too_few"] and not result["classes"]["A"]["too_few"]
    assert result["mean"]["n_findings"] == 1 and result["mean"]["left_out_too_few"] == ["B"]
    assert result["mean"]["delta"] == pytest.approx(result["classes"]["A"]["delta"])
    everything = compare_predictions(y, a, b, ["A", "B", "C"], include_too_few_in_mean=True)
    assert everything["mean"]["n_findings"] == 2
    with pytest.raises(CompareError):
        compare_predictions(y, a, b[:, :2], ["A", "B", "C"])


def test_auroc_summary_counts_positives_and_says_what_the_mean_leaves_out(reference):
    y, probs, _, _ = reference
    summary = auroc_summary(y[:60], probs[:60], FINDINGS, min_positives=10)
    for c, label in enumerate(FINDINGS):
        row = summary["classes"][label]
        assert row["n_pos"] == int(y[:60, c].sum()) and row["too_few"] == (row["n_pos"] < 10)
    assert summary["left_out_too_few"] and set(summary["left_out_too_few"]).isdisjoint(summary["mean_over"])
    assert summary["mean_auroc"] == pytest.approx(
        np.mean(
            [
                roc_auc_score(y[:60, FINDINGS.index(k)], probs[:60, FINDINGS.index(k)])
                for k in summary["mean_over"]
            ]
        )
    )
    assert "left out as too few" in summary["note"]


@pytest.fixture(scope="module")
def mini_test_split(tmp_path_factory, sample_dir, reference):
    """A folder whose official test split is 24 real images: 12 with Infiltration, 12 without."""
    from tests.mini_dataset import make_mini_dataset

    y, _, ids, _ = reference
    column = FINDINGS.index("Infiltration")
    positives = [i for i, row in zip(ids, y, strict=True) if row[column]][:12]
    negatives = [i for i, row in zip(ids, y, strict=True) if not row[column]][:12]
    return make_mini_dataset(tmp_path_factory.mktemp("mini-compare"), sample_dir, test=positives + negatives)


def test_cli_compare_contract_with_a_reference_comparator(sample_dir, reference, mini_test_split, capsys):
    from core.cli.main import main
    from core.paths import BUNDLED_MODEL_DIR

    csv = sample_dir / "reference_chexnet_predictions.csv"
    args = ["--data", str(mini_test_split), "--split", "test", "--backend", "torch", "--json", "--details"]
    code = main(["compare", str(BUNDLED_MODEL_DIR), str(csv), *args])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"n_images", "classes", "mean"} <= set(result)
    assert result["n_images"] == 24
    y, probs, ids, _ = reference
    chosen = sorted(p.name for p in (mini_test_split / "images").iterdir())
    rows = [ids.index(i) for i in chosen]
    both_classes = {f for c, f in enumerate(FINDINGS) if 0 < y[rows, c].sum() < len(rows)}
    assert set(result["classes"]) == both_classes  # the others are omitted
    for label, row in result["classes"].items():
        assert {"auroc_a", "auroc_b", "delta", "ci", "p", "p_holm", "n_pos"} <= set(row)
        c = FINDINGS.index(label)
        assert row["auroc_b"] == pytest.approx(roc_auc_score(y[rows, c], probs[rows, c]), abs=1e-9)
        assert row["delta"] == pytest.approx(row["auroc_b"] - row["auroc_a"], abs=1e-12)
        assert row["ci"][0] <= row["delta"] <= row["ci"][1] and 0 <= row["p"] <= row["p_holm"] <= 1
        assert row["n_pos"] == int(y[rows, c].sum()) and row["too_few"] == (row["n_pos"] < 10)
    assert {"auroc_a", "auroc_b", "delta", "ci"} <= set(result["mean"])
    assert result["mean"]["n_findings"] == 1  # only Infiltration has >= 10 positives
    assert result["mean"]["delta"] == pytest.approx(result["classes"]["Infiltration"]["delta"])
    # --details adds calibration and subgroups of both sides on the same images.
    assert set(result["details"]) == {result["a"], result["b"]} == {"chexnet-demo", csv.stem}
    details = result["details"][csv.stem]
    assert details["calibration"]["classes"]["Infiltration"]["n_pos"] == 12
    assert sum(group["n"] for group in details["subgroups"]["view"].values()) == 24


def test_cli_compare_refuses_a_folder_that_is_not_a_model(tmp_path, mini_test_split, capsys):
    from core.cli.main import main

    assert main(["compare", str(tmp_path), str(tmp_path), "--data", str(mini_test_split), "--json"]) == 1
    assert "is not a model folder" in capsys.readouterr().err


def test_the_cli_defaults_are_the_library_ones():
    import core.cli.compare_commands as cli_compare
    from core.evaluation.compare import MIN_POSITIVES
    from core.evaluation.evaluate import SPLITS

    assert cli_compare.SPLITS == SPLITS and cli_compare.MIN_POSITIVES == MIN_POSITIVES
