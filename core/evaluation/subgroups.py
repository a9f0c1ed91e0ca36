"""Per-finding AUROC by sex, age band and view position, and a view-only baseline for shortcuts.

The attributes come from Data_Entry (`Patient Gender`, `Patient Age`, `View Position`; `core.data.dataset`
names them sex, age, view). The view-only baseline scores each image 1 if AP and 0 if PA: its AUROC for a
finding shows how much the view alone "predicts" that finding (AP films are taken of sicker, bed-bound
patients), so a model's AUROC near it, or high overall but low within PA and within AP, suggests the model
has learnt the view rather than the disease.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from core.errors import UserError
from core.labels import FINDINGS

MIN_POSITIVES = 10
AGE_BANDS = ((0, 20, "<20"), (20, 40, "20-39"), (40, 60, "40-59"), (60, 200, "60+"))
SHORTCUT_AUROC = 0.6  # a view-only AUROC at or above this is called out
_COLUMNS = {"sex": "Patient Gender", "age": "Patient Age", "view": "View Position"}


class SubgroupError(UserError, ValueError):
    """Subgroups cannot be computed as asked (one human sentence)."""


def _attribute(entries: pd.DataFrame, name: str) -> pd.Series:
    for column in (name, _COLUMNS[name]):
        if column in entries.columns:
            return entries[column]
    raise SubgroupError(f"The image table has no '{_COLUMNS[name]}' column.")


def _age_band(ages: pd.Series) -> np.ndarray:
    values = pd.to_numeric(ages, errors="coerce").to_numpy(dtype=np.float64)
    bands = np.full(values.shape, "unknown", dtype=object)
    for low, high, name in AGE_BANDS:
        bands[(values >= low) & (values < high)] = name
    return bands


def _auroc_table(y: np.ndarray, p: np.ndarray, labels: Sequence[str], min_positives: int) -> dict[str, Any]:
    from core.evaluation.compare import auroc_summary

    summary = auroc_summary(y, p, labels, min_positives=min_positives)
    return {
        "n": int(y.shape[0]),
        "classes": summary["classes"],
        "mean_auroc": summary["mean_auroc"],
        "left_out_too_few": summary["left_out_too_few"],
    }


def subgroup_report(
    y_true: Any,
    y_prob: Any,
    entries: pd.DataFrame,
    labels: Sequence[str] = FINDINGS,
    *,
    min_positives: int = MIN_POSITIVES,
) -> dict[str, Any]:
    """`{"sex": {"M": table, "F": table}, "age_band": {...}, "view": {...}, "view_only_baseline": {...}}`.

    `entries` has one row per image in the order of `y_true`; each table is
    `{"n", "classes": {label: {auroc, n, n_pos, too_few}}, "mean_auroc", "left_out_too_few"}`.
    """
    y, p = np.asarray(y_true), np.asarray(y_prob, dtype=np.float64)
    labels = list(labels)
    if y.ndim != 2 or y.shape != p.shape or y.shape[1] != len(labels):
        raise SubgroupError("Labels and probabilities must be [images, findings] arrays of one shape.")
    if len(entries) != y.shape[0]:
        raise SubgroupError(f"The image table has {len(entries)} rows for {y.shape[0]} images.")
    groups = {
        "sex": _attribute(entries, "sex").astype(str).str.upper().to_numpy(),
        "age_band": _age_band(_attribute(entries, "age")),
        "view": _attribute(entries, "view").astype(str).str.upper().to_numpy(),
    }
    report: dict[str, Any] = {}
    for attribute, values in groups.items():
        order = [band for _, _, band in AGE_BANDS] if attribute == "age_band" else sorted(set(values))
        report[attribute] = {
            str(value): _auroc_table(y[values == value], p[values == value], labels, min_positives)
            for value in order
            if (values == value).any()
        }
    report["view_only_baseline"] = view_only_baseline(y, groups["view"], labels, min_positives=min_positives)
    report["min_positives"] = min_positives
    return report


def view_only_baseline(
    y_true: Any, views: Sequence[str], labels: Sequence[str] = FINDINGS, *, min_positives: int = MIN_POSITIVES
) -> dict[str, Any]:
    """AUROC of predicting each finding from "is AP" alone (PA/AP images only), with a sentence of warning."""
    from core.evaluation.metrics import fast_auroc

    views = np.asarray([str(v).upper() for v in views])
    frontal = np.isin(views, ["AP", "PA"])
    y = np.asarray(y_true)[frontal]
    is_ap = (views[frontal] == "AP").astype(np.float64)
    classes = {}
    for c, label in enumerate(labels):
        n_pos = int(y[:, c].sum())
        classes[label] = {
            "auroc": fast_auroc(y[:, c], is_ap),
            "n_pos": n_pos,
            "too_few": n_pos < min_positives,
        }
    strong = [
        label
        for label, v in classes.items()
        if v["auroc"] is not None and v["auroc"] >= SHORTCUT_AUROC and not v["too_few"]
    ]
    note = (
        f"The view alone reaches AUROC >= {SHORTCUT_AUROC} for {', '.join(strong)}: compare the model's "
        "AUROC within PA and within AP before trusting it there."
        if strong
        else f"The view alone reaches AUROC >= {SHORTCUT_AUROC} for no finding with enough positives."
    )
    return {
        "n": int(frontal.sum()),
        "n_ap": int(is_ap.sum()),
        "classes": classes,
        "shortcut_findings": strong,
        "note": note,
    }
