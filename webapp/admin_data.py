"""What the Fine-tune and Models & ROC pages read, as plain values (no ORM object outlives a rerun).

Each function opens its own short transaction through webapp.database.session.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from core.labels import FINDINGS, PUBLISHED_CHEXNET_AUROC
from core.paths import chexnet_home
from db.label_status import LabelStatus, label_status
from db.registry import list_versions, version_metrics
from jobs.listing import JobSummary, current_and_recent
from webapp.database import session
from webapp.formatting import duration_text, number_text, pretty, when_text

LABEL_CHOICES = {"nlp": "NLP labels", "reviewed": "reviewed labels"}
SPLIT_CHOICES = {
    "test": "official test split",
    "val": "validation split",
    "pacs": "images imported from a PACS",  # readers' labels only (jobs.imported_evaluation)
}


# ----------------------------------------------------------------------------------------------------
# Registry


@dataclass(frozen=True)
class VersionInfo:
    id: int
    name: str
    path: str
    parent: str | None
    status: str
    is_active: bool
    created_at: dt.datetime
    promoted_at: dt.datetime | None
    label_source: str
    label_snapshot: dict[str, Any]
    hyperparams: dict[str, Any]
    metrics: dict[str, Any] = field(repr=False)  # without the reports' curves (db metrics_summary)
    notes: str = ""
    registry_token: tuple = field(default=(), repr=False)  # db.changes.models_token when read

    @property
    def title(self) -> str:
        return f"{self.name} (active)" if self.is_active else self.name

    def report(self, labels: str = "nlp", split: str = "test") -> dict[str, Any] | None:
        """The evaluation report without its ROC and PR points (`report_with_curves` has them), or None."""
        return (((self.metrics or {}).get("evaluations") or {}).get(labels) or {}).get(split)

    def report_with_curves(self, labels: str = "nlp", split: str = "test") -> dict[str, Any] | None:
        """The full evaluation report, read from the database once per change of the registry."""
        if self.report(labels, split) is None:
            return None
        from db.engine import default_url

        return _report_with_curves(default_url(), self.registry_token, self.id, labels, split)

    def auroc_summary(self, labels: str = "nlp", split: str = "test") -> dict[str, Any] | None:
        """Per-class AUROC: the evaluation report if any, else (NLP labels only) the model card's figures."""
        report = self.report(labels, split)
        if report is not None or labels != "nlp":
            return report
        for section in ((self.metrics or {}).get("card") or {}).values():
            if isinstance(section, dict) and section.get("split") == split and section.get("auroc"):
                return section
        return None

    def mean_auroc(self, labels: str = "nlp", split: str = "test") -> float | None:
        summary = self.auroc_summary(labels, split)
        return None if summary is None else summary.get("mean_auroc")

    @property
    def training_val_auroc(self) -> float | None:
        training = (self.metrics or {}).get("training") or {}
        if training.get("mean_auroc") is not None:
            return training["mean_auroc"]
        return ((self.metrics or {}).get("card") or {}).get("val", {}).get("mean_auroc")

    @property
    def evaluated(self) -> bool:
        return bool((self.metrics or {}).get("evaluations"))

    @property
    def predictions_file(self) -> Path | None:
        """The per-image probabilities its last evaluation stored (None without, or outside CHEXNET_HOME)."""
        relative = ((self.metrics or {}).get("predictions") or {}).get("file")
        if not relative:
            return None
        home = chexnet_home().resolve()
        path = (home / relative).resolve()
        return path if path.is_relative_to(home) and path.is_file() else None


def _label_source_text(snapshot: dict[str, Any] | None) -> str:
    source = (snapshot or {}).get("source")
    if source == "effective":
        return f"reviewed ({snapshot.get('n_reviewed', 0):,} images)"
    if source == "nlp":
        return "NLP"
    return (snapshot or {}).get("description") or "—"


def load_versions() -> list[VersionInfo]:
    """All registered versions, newest first (the registry is seeded at start-up, never here).

    Read once per change of the registry (db.changes.models_token: versions, promotions, jobs), not on
    every rerun, and without the evaluation reports' curves (`VersionInfo.report_with_curves` reads one
    version's when a dashboard draws them)."""
    from db.changes import models_token
    from db.engine import default_url

    with session(read_only=True) as db:
        token = models_token(db)
    return _versions(default_url(), token)


@st.cache_data(show_spinner=False, max_entries=16)
def _report_with_curves(
    url_key: str, token: tuple, version_id: int, labels: str, split: str
) -> dict[str, Any] | None:
    with session(read_only=True) as db:
        metrics = version_metrics(db, version_id) or {}
    return ((metrics.get("evaluations") or {}).get(labels) or {}).get(split)


@st.cache_data(show_spinner=False, max_entries=4)
def _versions(url_key: str, token: tuple) -> list[VersionInfo]:
    with session(read_only=True) as db:
        versions = list_versions(db, curves=False)
        names = {v.id: v.name for v in versions}
        return [
            VersionInfo(
                id=v.id,
                name=v.name,
                path=v.path,
                parent=names.get(v.parent_id) if v.parent_id else None,
                status=v.status,
                is_active=v.is_active,
                created_at=v.created_at,
                promoted_at=v.promoted_at,
                label_source=_label_source_text(v.label_snapshot),
                label_snapshot=dict(v.label_snapshot or {}),
                hyperparams=dict(v.hyperparams or {}),
                metrics=dict(v.metrics_summary or {}),
                notes=v.notes or "",
                registry_token=token,
            )
            for v in versions
        ]


def registry_frame(versions: list[VersionInfo]) -> pd.DataFrame:
    """The registry as text cells ("—" where a figure is missing), the active version marked."""
    rows = []
    for v in versions:
        val = v.mean_auroc("nlp", "val")
        rows.append(
            {
                "version": f"● {v.name}" if v.is_active else v.name,
                "parent": v.parent or "—",
                "created": v.created_at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M"),
                "labels": v.label_source,
                "test AUROC": number_text(v.mean_auroc("nlp", "test")),
                "val AUROC": number_text(val if val is not None else v.training_val_auroc),
                "test AUROC, reviewed labels": number_text(v.mean_auroc("reviewed", "test")),
                "status": v.status,
            }
        )
    return pd.DataFrame(rows)


def default_split(versions: list[VersionInfo]) -> str:
    """The split with more evaluated images: the official test split, unless (as in the 555-image sample,
    whose test split has 4 images) the validation split is the larger one."""
    sizes = {"test": 0, "val": 0}
    for version in versions:
        for split in sizes:
            report = version.auroc_summary("nlp", split) or {}
            sizes[split] = max(sizes[split], int(report.get("n_images") or 0))
    return "val" if sizes["val"] > sizes["test"] else "test"


MIN_POSITIVES = 10  # core.evaluation.evaluate.MIN_POSITIVES: fewer positives and an AUROC is marked too few


def _positives_text(n_pos: dict[str, int] | None, finding: str) -> str:
    if not isinstance(n_pos, dict) or finding not in n_pos:
        return "—"
    count = int(n_pos[finding])
    return f"{count} · too few" if count < MIN_POSITIVES else str(count)


def auroc_table(versions: list[VersionInfo], labels: str, split: str) -> pd.DataFrame:
    """Per finding: each version's AUROC [95% CI] and positives (marked "too few" below 10), and
    CheXNet's published figure. The mean row leaves too-few findings out (said in `mean_note`)."""
    table = pd.DataFrame({"finding": [pretty(f) for f in FINDINGS]})
    means: dict[str, Any] = {"finding": "Mean"}
    for version in versions:
        summary = version.auroc_summary(labels, split) or {}
        auroc, ci, n_pos = summary.get("auroc") or {}, summary.get("auroc_ci") or {}, summary.get("n_pos")
        table[version.name] = [auroc.get(f) for f in FINDINGS]
        table[f"{version.name} 95% CI"] = [_ci_text(ci.get(f)) for f in FINDINGS]
        table[f"{version.name} positives"] = [_positives_text(n_pos, f) for f in FINDINGS]
        if "mean_auroc_enough" in summary:
            means[version.name] = summary["mean_auroc_enough"]
            means[f"{version.name} 95% CI"] = _ci_text(summary.get("mean_auroc_enough_ci"))
            too_few = sum(1 for n in (n_pos or {}).values() if n < MIN_POSITIVES)
            means[f"{version.name} positives"] = (
                f"no finding with {MIN_POSITIVES}+"
                if summary["mean_auroc_enough"] is None
                else f"{too_few} too few left out"
                if too_few
                else "all counted"
            )
        else:
            means[version.name] = summary.get("mean_auroc")
            means[f"{version.name} 95% CI"] = _ci_text(summary.get("mean_auroc_ci"))
            means[f"{version.name} positives"] = "not recorded" if summary else "—"
    table["CheXNet (published)"] = [PUBLISHED_CHEXNET_AUROC[f] for f in FINDINGS]
    means["CheXNet (published)"] = float(np.mean(list(PUBLISHED_CHEXNET_AUROC.values())))
    return pd.concat([table, pd.DataFrame([means])], ignore_index=True)


def style_auroc_table(table: pd.DataFrame) -> Any:
    """Three decimals; an AUROC from fewer than 10 positives is greyed (it is not left to look precise)."""
    numbers = [c for c in table.columns if c != "finding" and not c.endswith((" 95% CI", " positives"))]
    styler = table.style.format("{:.3f}", subset=numbers, na_rep="—")

    def grey(column: pd.Series) -> list[str]:
        positives = table.get(f"{column.name} positives")
        if positives is None:
            return [""] * len(column)
        return ["color: #9e9e9e; font-style: italic" if "too few" in str(v) else "" for v in positives]

    return styler.apply(grey, subset=numbers)


def _ci_text(ci: Any) -> str:
    if not ci or ci[0] is None or ci[1] is None:
        return "—"
    return f"{ci[0]:.3f}–{ci[1]:.3f}"


THRESHOLD_SOURCES = {
    "this_data": "chosen on these images (Youden's J; optimistic)",
    "given": "as given",
}


def threshold_source_text(report: dict[str, Any]) -> str:
    source = report.get("thresholds_source") or "the model card"
    return THRESHOLD_SOURCES.get(source, source).rstrip(".")


def operating_points_frame(report: dict[str, Any]) -> pd.DataFrame:
    """Per finding: threshold, precision, recall (sensitivity), specificity, F1 and support."""
    rows = []
    for finding in report.get("labels") or FINDINGS:
        rows.append(
            {
                "finding": pretty(finding),
                "threshold": (report.get("thresholds") or {}).get(finding),
                "precision": (report.get("precision") or {}).get(finding),
                "recall": (report.get("recall") or {}).get(finding),
                "specificity": (report.get("specificity") or {}).get(finding),
                "F1": (report.get("f1") or {}).get(finding),
                "positives": (report.get("support") or {}).get(finding),
                "AUROC": (report.get("auroc") or {}).get(finding),
            }
        )
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------------
# Dataset and labels


@st.cache_data(show_spinner=False, max_entries=4)
def _cached_status(url_key: str, token: tuple) -> LabelStatus:
    # A full recount reads every label of the dataset: only when labels, images or the active version
    # changed (db.changes.change_token), not on every rerun.
    with session(read_only=True) as db:
        return label_status(db)


def dataset_status() -> LabelStatus:
    from db.changes import change_token
    from db.engine import default_url

    with session(read_only=True) as db:
        token = change_token(db)
    return _cached_status(default_url(), token)


def finding_frame(status: LabelStatus) -> pd.DataFrame:
    since = f"changed since {status.active_name}" if status.active_name else "changed since active model"
    return pd.DataFrame(
        {
            "finding": [pretty(f.finding) for f in status.findings],
            "NLP positives": [f.nlp_positive for f in status.findings],
            "effective positives": [f.effective_positive for f in status.findings],
            "changed by review": [f.changed for f in status.findings],
            since: [f.changed_since_active for f in status.findings],
        }
    )


# ----------------------------------------------------------------------------------------------------
# Jobs


def load_jobs(limit: int = 25) -> tuple[JobSummary | None, list[JobSummary]]:
    """(the job to show live: running, else oldest queued, else newest), the newest `limit` jobs."""
    with session(read_only=True) as db:
        return current_and_recent(db, limit)


def jobs_frame(jobs: list[JobSummary]) -> pd.DataFrame:
    rows = []
    for job in jobs:
        source = job.fine_tune.label_source if job.fine_tune is not None else ""
        rows.append(
            {
                "job": job.id,
                "kind": job.kind_text,
                "status": job.status,
                "version": job.result_version or job.version_name or "",
                "epochs": job.epochs,
                "labels": {"effective": "reviewed", "nlp": "NLP"}.get(source, ""),
                "queued": when_text(job.created_at),
                "ran for": duration_text(job.duration_s) if job.started_at else "—",
                "message": job.error or job.progress.message or "",
            }
        )
    return pd.DataFrame(rows)
