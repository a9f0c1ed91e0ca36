"""The Models & ROC page's comparison of versions: which versions and reports to draw, the paired
comparison of two versions (or a reference) from their stored per-image predictions, the calibration and
subgroup tables, and the sentences around them (version names escaped for markdown)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core.errors import UserError
from core.evaluation.prediction_sets import read_reference_csv
from core.evaluation.prediction_store import (
    StoredSplit,
    compare_stored,
    load_stored,
    reference_split,
    significantly_worse,
)
from webapp.admin_data import LABEL_CHOICES, SPLIT_CHOICES, VersionInfo
from webapp.formatting import number_text, plain, pretty
from webapp.model_charts import curve_grid, curve_overlay

ALL_FINDINGS = "__all__"
METRIC_COLUMNS = ("threshold", "precision", "recall", "specificity", "F1", "AUROC")
TABS = [
    ":material/show_chart: ROC curves",
    ":material/table: AUROC table",
    ":material/compare_arrows: Paired comparison",
    ":material/balance: Calibration",
    ":material/groups: Subgroups",
    ":material/ssid_chart: PR curves",
    ":material/tune: Operating thresholds",
]


def default_compared(versions: list[VersionInfo]) -> list[str]:
    """The active version and the newest other one."""
    active = [v.name for v in versions if v.is_active]
    return active + [v.name for v in versions if not v.is_active][:1]


def compared(versions: list[VersionInfo], picked: list[str]) -> list[VersionInfo]:
    """The picked versions, the active one first (it gets the first colour), then in registry order."""
    names = [v.name for v in versions]
    chosen = (v for v in versions if v.name in picked)
    return sorted(chosen, key=lambda v: (not v.is_active, names.index(v.name)))


def label_choice_text(key: str) -> str:
    return LABEL_CHOICES[key].capitalize() if key == "reviewed" else LABEL_CHOICES[key]


def split_choice_text(split: str) -> str:
    return {"test": "Test", "val": "Validation", "pacs": "PACS imports"}[split]


def finding_choice_text(finding: str) -> str:
    return "All 14 findings" if finding == ALL_FINDINGS else pretty(finding)


def evaluation_reports(
    versions: list[VersionInfo], labels: str, split: str
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """({version name: its evaluation report}, the names of versions without one) for labels and split."""
    reports = {v.name: v.report_with_curves(labels, split) for v in versions}
    missing = [name for name, report in reports.items() if report is None]
    return {name: report for name, report in reports.items() if report is not None}, missing


def missing_text(missing: list[str], labels: str, split: str) -> str:
    if split == "pacs" and labels != "reviewed":
        return "Images imported from a PACS have no NLP labels: choose the reviewed labels to see them."
    if split == "pacs":
        return (
            f"No evaluation of {', '.join(plain(name) for name in missing)} on the images imported from a "
            "PACS: it is made when readers have labelled some of them. Select the version in the registry "
            "and press **Evaluate**."
        )
    why = " (made where reviewed images lie in the split)" if labels == "reviewed" else ""
    return (
        f"No evaluation of {', '.join(plain(name) for name in missing)} on the {SPLIT_CHOICES[split]} "
        f"against {LABEL_CHOICES[labels]}{why}. Select it in the registry and press **Evaluate**; meanwhile "
        "the AUROC table shows the figures of its model card where there are any."
    )


def reports_caption(reports: dict[str, dict[str, Any]], labels: str) -> str | None:
    """Images, labels and bootstrap of the first report (all compared reports share the split)."""
    if not reports:
        return None
    first = next(iter(reports.values()))
    source = first.get("labels_source") or LABEL_CHOICES[labels]
    level = int(round(100 * (first.get("ci_level") or 0.95)))
    return (
        f"{first.get('n_images', 0):,} images · labels: {plain(source)} · {level}% CIs from "
        f"{first.get('n_boot', 0):,} bootstrap resamples"
    )


def grid_caption(kind: str) -> str:
    axes = "false positive rate →, true positive rate ↑. " if kind == "roc" else "recall →, precision ↑. "
    figure = "AUROC" if kind == "roc" else "average precision"
    return (
        f"Axes 0–1: {axes}Panel titles give each version's {figure} in legend order; “undefined” where "
        "the split has no positive of the finding."
    )


def table_height(rows: int) -> int:
    """A dataframe height that shows `rows` rows and the header without scrolling."""
    return 35 * (rows + 1) + 3


def metric_columns() -> dict:
    return {name: st.column_config.NumberColumn(name, format="%.3f") for name in METRIC_COLUMNS}


# ----------------------------------------------------------------------------------------------------
# Paired comparison (stored per-image predictions, no inference), calibration and subgroups

REFERENCE_KEY = "reference:"
SIGNIFICANCE = 0.05  # Holm-adjusted p below this: a difference worth colouring (and calling out)


@dataclass(frozen=True)
class Comparable:
    """A version with stored per-image predictions, or a reference CSV: something to compare."""

    key: str
    name: str
    kind: str  # "version" | "reference"
    path: str  # the .npz or the CSV
    mtime: float


def comparables(versions: list[VersionInfo], references: list[Any]) -> dict[str, Comparable]:
    """key -> Comparable: versions whose evaluation stored predictions, then reference entries."""
    found: dict[str, Comparable] = {}
    for version in versions:
        path = version.predictions_file
        if path is not None:
            key = f"version:{version.id}"
            found[key] = Comparable(key, version.name, "version", str(path), path.stat().st_mtime)
    for entry in references:
        path = entry.csv_path()
        key = REFERENCE_KEY + entry.slug
        found[key] = Comparable(
            key, f"{entry.name} (reference)", "reference", str(path), path.stat().st_mtime
        )
    return found


@st.cache_data(show_spinner=False, max_entries=16)
def _stored(path: str, mtime: float) -> dict[str, StoredSplit]:
    return load_stored(path)


@st.cache_data(show_spinner=False, max_entries=8)
def _reference(path: str, mtime: float, name: str) -> pd.DataFrame:
    return read_reference_csv(path, name).probabilities


@st.cache_data(show_spinner="Comparing on the same images…", max_entries=16)
def paired_comparison(
    a: Comparable, b: Comparable, split: str, labels: str
) -> tuple[dict | None, str | None]:
    """(DeLong comparison of B against A on the images both cover, None) or (None, why not)."""
    if a.kind == "reference" and b.kind == "reference":
        return None, "Pick at least one version: its evaluation supplies the images and their labels."
    try:
        stored = {c.key: _stored(c.path, c.mtime).get(split) for c in (a, b) if c.kind == "version"}
        missing = [c.name for c in (a, b) if c.kind == "version" and stored[c.key] is None]
        if missing:
            return None, f"No stored {SPLIT_CHOICES[split]} predictions of {', '.join(map(plain, missing))}."
        like = next(iter(stored.values()))
        sides = [
            stored[c.key]
            if c.kind == "version"
            else reference_split(_reference(c.path, c.mtime, c.name), like, c.name)
            for c in (a, b)
        ]
        if labels not in sides[1].truth:
            return (
                None,
                f"No stored {LABEL_CHOICES[labels]} for {plain(b.name)} on the {SPLIT_CHOICES[split]}.",
            )
        return compare_stored(sides[0], sides[1], labels), None
    except UserError as exc:
        return None, plain(exc)


def comparison_frame(result: dict[str, Any]) -> pd.DataFrame:
    rows = []
    for label, row in result["classes"].items():
        rows.append({
            "finding": pretty(label), "A": row["auroc_a"], "B": row["auroc_b"], "Δ (B − A)": row["delta"],
            "95% CI": f"{row['ci'][0]:+.3f} to {row['ci'][1]:+.3f}", "p": row["p"], "p (Holm)": row["p_holm"],
            "positives": f"{row['n_pos']} · too few" if row["too_few"] else str(row["n_pos"]),
        })  # fmt: skip
    mean = result["mean"]
    if mean["delta"] is not None:
        rows.append({
            "finding": f"Mean of {mean['n_findings']}", "A": mean["auroc_a"], "B": mean["auroc_b"],
            "Δ (B − A)": mean["delta"], "95% CI": f"{mean['ci'][0]:+.3f} to {mean['ci'][1]:+.3f}",
            "p": mean.get("p"), "p (Holm)": None, "positives": "too few left out",
        })  # fmt: skip
    return pd.DataFrame(rows)


def style_comparison(frame: pd.DataFrame) -> Any:
    """Colour only what is significant after Holm's adjustment: green where B is better, red where worse."""

    def colour(row: pd.Series) -> list[str]:
        p_holm = row["p (Holm)"]
        if p_holm is None or pd.isna(p_holm) or p_holm >= SIGNIFICANCE:
            return [""] * len(row)
        style = (
            "color: #1a7f37; font-weight: 600" if row["Δ (B − A)"] > 0 else "color: #c62828; font-weight: 600"
        )
        return [style if column in ("Δ (B − A)", "p (Holm)") else "" for column in row.index]

    styler = frame.style.format("{:.3f}", subset=["A", "B"], na_rep="—")
    styler = styler.format("{:+.3f}", subset=["Δ (B − A)"], na_rep="—")
    styler = styler.format("{:.3g}", subset=["p", "p (Holm)"], na_rep="—")
    return styler.apply(colour, axis=1)


def comparison_caption(result: dict[str, Any], a: str, b: str) -> str:
    text = (
        f"A: {plain(a)}, B: {plain(b)}, on the same {result['n_images']:,} images of the "
        f"{SPLIT_CHOICES[result['split']]} (labels from B's evaluation). DeLong's test for correlated ROC "
        f"curves, 95% CI, two-sided p, Holm-adjusted across findings; coloured only where p (Holm) < "
        f"{SIGNIFICANCE}. Findings with fewer than {result['min_positives']} positives are marked too few "
        "and left out of the mean."
    )
    if result.get("omitted"):
        text += f" Left out (one class only): {', '.join(pretty(f) for f in result['omitted'])}."
    if result.get("n_label_differences"):
        text += f" {result['n_label_differences']:,} common images have other labels in A's evaluation."
    return text


def worse_text(result: dict[str, Any], a: str, b: str) -> str | None:
    """The findings where B is significantly worse than A (p_holm < 0.05, delta < 0), as a sentence."""
    worse = significantly_worse(result, SIGNIFICANCE)
    if not worse:
        return None
    rows = result["classes"]
    listed = "; ".join(f"{pretty(f)} {rows[f]['delta']:+.3f} (p Holm {rows[f]['p_holm']:.3g})" for f in worse)
    return f"{plain(b)} is significantly worse than {plain(a)} on {len(worse)} finding(s): {listed}."


def calibration_frame(report: dict[str, Any]) -> pd.DataFrame | None:
    calibration = report.get("calibration")
    if not calibration:
        return None
    after = (report.get("temperature") or {}).get("ece_after") or {}
    rows = [
        {"finding": pretty(label), "ECE": row["ece"], "Brier": row["brier"],
         "ECE after temperature": after.get(label),
         "positives": f"{row['n_pos']} · too few" if row["too_few"] else str(row["n_pos"])}
        for label, row in calibration["classes"].items()
    ]  # fmt: skip
    return pd.DataFrame(rows)


def calibration_caption(report: dict[str, Any]) -> str:
    calibration = report["calibration"]
    text = f"ECE over {calibration['binning']}; Brier: mean squared error of the probability. "
    if calibration.get("mean_ece") is not None:
        text += f"Means (findings with at least 10 positives): ECE {calibration['mean_ece']:.3f}, "
        text += f"Brier {calibration['mean_brier']:.3f}. "
    temperature = report.get("temperature")
    if temperature:
        where = SPLIT_CHOICES.get(temperature["split"], temperature["split"])
        text += (
            f"Temperature {temperature['temperature']:.2f} fitted on the {where} "
            f"({temperature['n_images']:,} images) gives mean ECE "
            f"{number_text(temperature['mean_ece_after'])}; it is stored, not applied by the Predict page."
        )
    return text


SUBGROUP_ATTRIBUTES = {"sex": "sex", "age_band": "age band", "view": "view position"}


def subgroup_frame(report: dict[str, Any], attribute: str) -> pd.DataFrame | None:
    """Per finding: AUROC (positives) in each group of `attribute`, and the view-only baseline."""
    subgroups = report.get("subgroups")
    if not subgroups:
        return None
    groups = subgroups.get(attribute) or {}
    baseline = subgroups["view_only_baseline"]["classes"]
    rows = []
    for label in baseline:
        row: dict[str, Any] = {"finding": pretty(label)}
        for group, table in groups.items():
            cell = table["classes"][label]
            mark = " · too few" if cell["too_few"] else ""
            auroc = "—" if cell["auroc"] is None else f"{cell['auroc']:.3f}"
            row[f"{group} (n {table['n']:,})"] = f"{auroc} ({cell['n_pos']}{mark})"
        base = baseline[label]
        row["view only (AP=1)"] = "—" if base["auroc"] is None else f"{base['auroc']:.3f}"
        rows.append(row)
    return pd.DataFrame(rows)


def _reports_fingerprint(reports: dict[str, dict[str, Any]]) -> tuple:
    """What identifies the compared reports' curves cheaply: each version's name, images and AUROCs (a
    re-evaluation changes them), instead of hashing every curve on every rerun."""
    return tuple(
        (name, report.get("n_images"), tuple(sorted((report.get("auroc") or {}).items())))
        for name, report in reports.items()
    )


@st.cache_resource(show_spinner=False, max_entries=32)
def _curve_figure(fingerprint: tuple, kind: str, finding: str, _reports: dict) -> go.Figure:
    # A resource, not data: the figure is returned as is (never mutated), not unpickled on every rerun.
    return curve_grid(_reports, kind) if finding == ALL_FINDINGS else curve_overlay(_reports, finding, kind)


def curve_figure(reports: dict[str, dict[str, Any]], kind: str, finding: str) -> go.Figure:
    """The ROC or PR figure of every finding (a 14-panel grid) or of one, built once per set of reports:
    a 14-panel plotly grid takes a few hundred milliseconds to build."""
    return _curve_figure(_reports_fingerprint(reports), kind, finding, reports)
