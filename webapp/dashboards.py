"""The Models & ROC page's comparison of versions: which versions and reports to draw, and the sentences
around the charts and tables (version names escaped for markdown)."""

from __future__ import annotations

from typing import Any

import streamlit as st

from webapp.admin_data import LABEL_CHOICES, SPLIT_CHOICES, VersionInfo
from webapp.formatting import plain, pretty

ALL_FINDINGS = "__all__"
METRIC_COLUMNS = ("threshold", "precision", "recall", "specificity", "F1", "AUROC")


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
    return "Test" if split == "test" else "Validation"


def finding_choice_text(finding: str) -> str:
    return "All 14 findings" if finding == ALL_FINDINGS else pretty(finding)


def evaluation_reports(
    versions: list[VersionInfo], labels: str, split: str
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """({version name: its evaluation report}, the names of versions without one) for labels and split."""
    reports = {v.name: v.report(labels, split) for v in versions}
    missing = [name for name, report in reports.items() if report is None]
    return {name: report for name, report in reports.items() if report is not None}, missing


def missing_text(missing: list[str], labels: str, split: str) -> str:
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
