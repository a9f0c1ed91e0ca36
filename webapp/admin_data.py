"""What the Fine-tune and Models & ROC pages read, as plain values (no ORM object outlives a rerun).

Each function opens its own short transaction through webapp.database.session.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import streamlit as st
from sqlalchemy import func, select

from core.labels import FINDINGS, PUBLISHED_CHEXNET_AUROC
from db.label_status import LabelStatus, label_status
from db.models import Image, LabelEvent, ModelVersion
from db.registry import list_versions
from jobs.listing import JobSummary, current_and_recent
from webapp.database import session
from webapp.formatting import duration_text, number_text, pretty, when_text

LABEL_CHOICES = {"nlp": "NLP labels", "reviewed": "reviewed labels"}
SPLIT_CHOICES = {"test": "official test split", "val": "validation split"}


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
    metrics: dict[str, Any] = field(repr=False)
    notes: str = ""

    @property
    def title(self) -> str:
        return f"{self.name} (active)" if self.is_active else self.name

    def report(self, labels: str = "nlp", split: str = "test") -> dict[str, Any] | None:
        """The full evaluation report (with curves), or None."""
        return (((self.metrics or {}).get("evaluations") or {}).get(labels) or {}).get(split)

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


def _label_source_text(snapshot: dict[str, Any] | None) -> str:
    source = (snapshot or {}).get("source")
    if source == "effective":
        return f"reviewed ({snapshot.get('n_reviewed', 0):,} images)"
    if source == "nlp":
        return "NLP"
    return (snapshot or {}).get("description") or "—"


def load_versions() -> list[VersionInfo]:
    """All registered versions, newest first (the registry is seeded at start-up, never here)."""
    with session(read_only=True) as db:
        versions = list_versions(db)
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
                metrics=dict(v.metrics or {}),
                notes=v.notes or "",
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


def auroc_table(
    versions: list[VersionInfo], active: VersionInfo | None, labels: str, split: str
) -> pd.DataFrame:
    """Per finding: each version's AUROC [95% CI], its delta to the active version, and CheXNet's figure."""
    reference = active.auroc_summary(labels, split) if active is not None else None
    table = pd.DataFrame({"finding": [pretty(f) for f in FINDINGS]})
    for version in versions:
        summary = version.auroc_summary(labels, split) or {}
        auroc = summary.get("auroc") or {}
        ci = summary.get("auroc_ci") or {}
        table[f"{version.name}"] = [auroc.get(f) for f in FINDINGS]
        table[f"{version.name} 95% CI"] = [_ci_text(ci.get(f)) for f in FINDINGS]
        if reference is not None and not version.is_active:
            base = reference.get("auroc") or {}
            table[f"{version.name} Δ"] = [
                None if auroc.get(f) is None or base.get(f) is None else auroc[f] - base[f] for f in FINDINGS
            ]
    table["CheXNet (published)"] = [PUBLISHED_CHEXNET_AUROC[f] for f in FINDINGS]
    means = {"finding": "Mean"}
    for column in table.columns[1:]:
        values = pd.to_numeric(table[column], errors="coerce")
        means[column] = values.mean() if values.notna().any() and "CI" not in column else None
    for version in versions:
        summary = version.auroc_summary(labels, split) or {}
        if summary.get("mean_auroc") is not None:
            means[version.name] = summary["mean_auroc"]
        means[f"{version.name} 95% CI"] = _ci_text(summary.get("mean_auroc_ci"))
    return pd.concat([table, pd.DataFrame([means])], ignore_index=True)


def style_auroc_table(table: pd.DataFrame) -> Any:
    """Three decimals; deltas signed, green where the version beats the active one, red where it is worse."""

    def colour(value: Any) -> str:
        if not isinstance(value, int | float) or pd.isna(value) or abs(value) < 0.005:
            return ""
        return "color: #1a7f37; font-weight: 600" if value > 0 else "color: #c62828; font-weight: 600"

    deltas = [c for c in table.columns if "Δ" in c]
    numbers = [c for c in table.columns if c != "finding" and "CI" not in c and c not in deltas]
    styler = table.style.format("{:.3f}", subset=numbers, na_rep="—")
    styler = styler.format("{:+.3f}", subset=deltas, na_rep="—")
    return styler.map(colour, subset=deltas)


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
    return THRESHOLD_SOURCES.get(source, source)


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
def _cached_status(
    url_key: str, n_images: int, n_events: int, last_event: Any, active_id: int | None
) -> LabelStatus:
    # Keyed on counts that change whenever labels or the active version do: a full recount is needed
    # only then (it reads every label of the dataset).
    with session(read_only=True) as db:
        return label_status(db)


def dataset_status() -> LabelStatus:
    from db.engine import default_url

    with session(read_only=True) as db:
        n_images = int(db.scalar(select(func.count()).select_from(Image)) or 0)
        n_events = int(db.scalar(select(func.count()).select_from(LabelEvent)) or 0)
        last_event = db.scalar(select(func.max(LabelEvent.id)))
        active_id = db.scalar(select(ModelVersion.id).where(ModelVersion.is_active))
    return _cached_status(default_url(), n_images, n_events, last_event, active_id)


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
