"""Models & ROC: how often readers said a version's heat map (CAM) points at the finding, per version and
per finding: the Review page's verdicts, counted in SQL by db.cam_feedback.agreement_by_model (one
statement). A share resting on fewer than MIN_POSITIVES marks reads "too few". Version names are
user-supplied: they only appear in dataframe cells (plain text)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import streamlit as st

from db.cam_feedback import CamAgreement, agreement_by_model
from db.reader_stats import MIN_POSITIVES
from webapp.admin_data import VersionInfo
from webapp.database import session
from webapp.formatting import pretty

SHARE_COLUMN = "Points at the finding"


def share_text(row: CamAgreement) -> str:
    return "too few" if row.n < MIN_POSITIVES or row.share is None else f"{row.share:.1%}"


def _status(name: str, versions: Sequence[VersionInfo]) -> str:
    version = next((v for v in versions if v.name == name), None)
    return "not in the registry" if version is None else "active" if version.is_active else "registered"


def _model_order(rows: Sequence[CamAgreement], versions: Sequence[VersionInfo]) -> dict[str, int]:
    """Model name -> rank: the active version, then the registry's order, then unregistered names."""
    ranked = [v.name for v in sorted(versions, key=lambda v: not v.is_active)]
    others = sorted({r.model_name for r in rows} - set(ranked))
    return {name: i for i, name in enumerate([*ranked, *others])}


def agreement_frames(
    rows: Sequence[CamAgreement], versions: Sequence[VersionInfo]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per model: status, marks, share; one row per model and finding: marks, share)."""
    order = _model_order(rows, versions)
    rows = sorted(rows, key=lambda r: (order[r.model_name], r.finding or ""))
    totals = [r for r in rows if r.finding is None]
    per_model = pd.DataFrame(
        {
            "Model": [r.model_name for r in totals],
            "Status": [_status(r.model_name, versions) for r in totals],
            "Marks": [r.n for r in totals],
            SHARE_COLUMN: [share_text(r) for r in totals],
        }
    )
    findings = [r for r in rows if r.finding is not None]
    per_finding = pd.DataFrame(
        {
            "Model": [r.model_name for r in findings],
            "Finding": [pretty(r.finding or "") for r in findings],
            "Marks": [r.n for r in findings],
            SHARE_COLUMN: [share_text(r) for r in findings],
        }
    )
    return per_model, per_finding


def cam_agreement_section(versions: Sequence[VersionInfo]) -> None:
    """The section, after a divider: a table per model, and per model and finding in an expander."""
    st.divider()
    st.subheader("Heat-map feedback")
    with session(read_only=True) as db:
        rows = agreement_by_model(db)
    if not rows:
        st.info(
            "No reader has marked a heat map yet. On the Review page, readers say whether the heat map "
            "of a finding points at it; the share per model version shows here.",
            icon=":material/info:",
        )
        return
    per_model, per_finding = agreement_frames(rows, versions)
    st.caption(
        f"Readers' verdicts on the Review page: does the model's heat map point at the finding? Marks: "
        f"verdicts given (one per image, reader and finding). Fewer than {MIN_POSITIVES} marks: too few "
        "to say."
    )
    st.dataframe(per_model, hide_index=True, width="stretch", key="cam_agreement_models")
    with st.expander("By finding", icon=":material/table_rows:"):
        st.dataframe(per_finding, hide_index=True, width="stretch", key="cam_agreement_findings")
