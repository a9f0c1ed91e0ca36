"""Subgroup AUROCs and the view-only baseline on the real sample's reference predictions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from core.evaluation.subgroups import SubgroupError, subgroup_report, view_only_baseline
from core.labels import FINDINGS


@pytest.fixture(scope="module")
def reference(sample_dir):
    from core.data.dataset import labels_matrix, load_chestxray14

    ds = load_chestxray14(sample_dir)
    table = pd.read_csv(sample_dir / "reference_chexnet_predictions.csv").set_index("Image Index")
    ids = [i for i in table.index if i in ds.entries.index]
    probs = table.loc[ids, [f"prob_{f}" for f in FINDINGS]].to_numpy()
    return labels_matrix(ds, ids).astype(int), probs, ds.entries.loc[ids]


def test_subgroups_partition_the_images_and_match_sklearn_within_each(reference):
    y, probs, entries = reference
    report = subgroup_report(y, probs, entries, FINDINGS)
    assert set(report["sex"]) == {"F", "M"}
    assert sum(g["n"] for g in report["sex"].values()) == len(entries)
    assert report["sex"]["M"]["n"] == int((entries["sex"] == "M").sum())
    assert list(report["age_band"]) == ["<20", "20-39", "40-59", "60+"]
    assert report["age_band"]["60+"]["n"] == int((entries["age"] >= 60).sum())
    assert report["age_band"]["<20"]["n"] == int((entries["age"] < 20).sum())
    assert sum(g["n"] for g in report["age_band"].values()) == len(entries)
    assert {k: v["n"] for k, v in report["view"].items()} == entries["view"].value_counts().to_dict()
    ap = (entries["view"] == "AP").to_numpy()
    c = FINDINGS.index("Effusion")
    row = report["view"]["AP"]["classes"]["Effusion"]
    assert row["auroc"] == pytest.approx(roc_auc_score(y[ap, c], probs[ap, c]))
    assert row["n"] == int(ap.sum()) and row["n_pos"] == int(y[ap, c].sum())
    assert row["too_few"] == (row["n_pos"] < 10)
    # A group's mean leaves out its findings with too few positives.
    group = report["age_band"]["<20"]
    assert group["left_out_too_few"] and all(
        group["classes"][k]["too_few"] for k in group["left_out_too_few"]
    )


def test_view_only_baseline_on_the_real_sample(reference):
    y, _, entries = reference
    views = entries["view"].tolist()
    baseline = view_only_baseline(y, views, FINDINGS)
    is_ap = np.array([v == "AP" for v in views], dtype=float)
    for c, label in enumerate(FINDINGS):
        assert baseline["classes"][label]["auroc"] == pytest.approx(roc_auc_score(y[:, c], is_ap))
    assert baseline["n_ap"] == int(is_ap.sum()) and baseline["n"] == len(views)
    strong = [k for k, v in baseline["classes"].items() if v["auroc"] >= 0.6 and not v["too_few"]]
    assert baseline["shortcut_findings"] == strong


def test_a_finding_that_is_the_view_is_called_out():
    views = ["AP"] * 30 + ["PA"] * 70 + ["LL"] * 5  # the lateral is not frontal: left out
    y = np.zeros((105, 2), dtype=int)
    y[:30, 0] = 1  # finding 0 present exactly on AP films
    y[::4, 1] = 1  # finding 1 unrelated to the view
    baseline = view_only_baseline(y, views, ["Shortcut", "Honest"])
    assert baseline["classes"]["Shortcut"]["auroc"] == 1.0 and baseline["n"] == 100
    assert baseline["shortcut_findings"] == ["Shortcut"] and "Shortcut" in baseline["note"]
    assert baseline["classes"]["Honest"]["auroc"] < 0.6


def test_data_entry_column_names_work_and_a_missing_column_is_one_sentence(reference):
    y, probs, entries = reference
    raw = entries.rename(columns={"sex": "Patient Gender", "age": "Patient Age", "view": "View Position"})
    renamed = subgroup_report(y[:100], probs[:100], raw.iloc[:100], FINDINGS)
    assert renamed["sex"] == subgroup_report(y[:100], probs[:100], entries.iloc[:100], FINDINGS)["sex"]
    with pytest.raises(SubgroupError, match="Patient Age"):
        subgroup_report(y, probs, entries.drop(columns="age"), FINDINGS)
