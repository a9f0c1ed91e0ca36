"""Models & ROC, for the version picked in the registry (admins only, like the page): the threshold each
finding uses and where it comes from (the model card's choice, or an admin's operating point with who,
when and why), a form to set one, their history; and the registry's promotion records (who promoted or
rolled back which version, and why; the reason is typed in the confirm step, webapp.model_sections).

The Predict page applies the points of the version it serves (webapp.active_model). Usernames and
reasons are people's text: they are shown in dataframes (plain cells) or escaped with plain().
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from core.errors import UserError
from core.inference.artifact import ArtifactError, read_artifact
from core.labels import FINDINGS
from db.operating_points import OperatingPoint, current_operating_points, history, set_operating_point
from db.registry import RegistryEventView, registry_events
from db.reviews import account_by_id
from webapp.admin_data import VersionInfo
from webapp.auth import SessionUser
from webapp.database import session
from webapp.formatting import flash, plain, pretty, when_text

FORM_KEY = "set_operating_point"
EVENTS_SHOWN = 50


def card_origin_text(card: dict[str, Any] | None) -> str:
    """How the model card's thresholds were chosen (the card's "operating_points", written by
    core.evaluation.operating_points, else its older notes)."""
    if card is None:
        return "model card (unreadable)"
    points = card.get("operating_points") or {}
    if points.get("description"):
        return f"model card: {points['description']}"
    chosen = card.get("thresholds_chosen_on")
    if chosen:
        return (
            f"model card: {chosen.get('method', 'Youden')} on the {chosen.get('split')} split "
            f"({chosen.get('n_images', '?')} images)"
        )
    if card.get("thresholds_source"):
        return f"model card: {card['thresholds_source']}"
    return "model card (how it was chosen is not recorded)"


def _by(point: OperatingPoint) -> str:
    return point.set_by or "the command line"


def set_by_text(point: OperatingPoint) -> str:
    return f"set by {_by(point)} on {when_text(point.created_at)}: {point.reason}"


def thresholds_frame(card: dict[str, Any] | None, current: dict[str, OperatingPoint]) -> pd.DataFrame:
    """Per finding: the threshold in use, where it comes from, and the card's own (plain text cells)."""
    card_thresholds = (card or {}).get("thresholds") or {}
    card_text = card_origin_text(card)
    rows = []
    for finding in FINDINGS:
        card_value = float(card_thresholds.get(finding, 0.5)) if card is not None else None
        point = current.get(finding)
        rows.append(
            {
                "finding": pretty(finding),
                "threshold in use": point.threshold if point else card_value,
                "from": set_by_text(point) if point else card_text,
                "model card threshold": card_value,
            }
        )
    return pd.DataFrame(rows)


def history_frame(points: list[OperatingPoint]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "set at": [when_text(p.created_at) for p in points],
            "finding": [pretty(p.finding) for p in points],
            "threshold": [p.threshold for p in points],
            "set by": [_by(p) for p in points],
            "reason": [p.reason for p in points],
        }
    )


def events_frame(events: list[RegistryEventView]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "at": [when_text(e.at) for e in events],
            "action": ["promoted" if e.action == "promote" else "rolled back to" for e in events],
            "version": [e.version for e in events],
            "replacing": [e.previous or "—" for e in events],
            "by": [e.by_text for e in events],
            "reason": [e.reason or "—" for e in events],
        }
    )


def set_point(version: VersionInfo, user_id: int, finding: str, threshold: float, reason: str) -> None:
    try:
        with session() as db_session:
            admin = account_by_id(db_session, user_id)
            point = set_operating_point(db_session, version.id, finding, threshold, reason, admin)
    except UserError as exc:
        flash("error", plain(exc))
        return
    where = "from its next run" if version.is_active else "once this version is active"
    flash(
        "success",
        f"{pretty(finding)} of {plain(version.name)} now uses threshold {point.threshold:.3f}; the Predict "
        f"page uses it {where}.",
    )


def _card(version: VersionInfo) -> tuple[dict[str, Any] | None, str | None]:
    try:
        return read_artifact(version.path).card, None
    except (ArtifactError, OSError) as exc:
        return None, f"The model card of {plain(version.name)} cannot be read ({plain(exc)})."


def _form(version: VersionInfo, user: SessionUser) -> None:
    with st.form(FORM_KEY):  # kept on a refusal, so the admin can correct it
        st.markdown("**Set an operating point**")
        left, right = st.columns([3, 2])
        finding = left.selectbox("Finding", FINDINGS, format_func=pretty, key="op_finding")
        threshold = right.number_input(
            "Threshold", min_value=0.0, max_value=1.0, value=0.5, step=0.01, format="%.3f", key="op_threshold"
        )
        reason = st.text_input(
            "Reason (required)",
            key="op_reason",
            max_chars=1000,
            help="Why this threshold, e.g. the clinical use it is set for; kept with your name.",
        )
        submitted = st.form_submit_button("Set operating point", key="op_submit", icon=":material/tune:")
    if submitted:
        set_point(version, user.id, finding, float(threshold), reason)
        st.rerun()


def operating_points_section(version: VersionInfo, user: SessionUser) -> None:
    """The selected version's thresholds, their form and history, and the promotion records."""
    if user.role != "admin":
        return
    card, problem = _card(version)
    with session(read_only=True) as db_session:
        current = current_operating_points(db_session, version.id)
        past = history(db_session, version.id)
        events = registry_events(db_session, limit=EVENTS_SHOWN)
    label = f"Operating points of {plain(version.name)}"
    with st.expander(label, icon=":material/tune:", expanded=bool(current)):
        if problem:
            st.warning(problem)
        st.dataframe(thresholds_frame(card, current), hide_index=True, width="stretch", key="op_table")
        use = "uses these now" if version.is_active else "uses these while this version is active"
        st.caption(
            f"{len(current)} of {len(FINDINGS)} thresholds set by an admin; the others are the model card's. "
            f"The Predict page {use}: its threshold marks, the findings above threshold and its table."
        )
        _form(version, user)
        if past:
            st.markdown("**History** (newest first; the latest of each finding is in use)")
            st.dataframe(history_frame(past), hide_index=True, width="stretch", key="op_history")
    with st.expander("Promotion history: who and why", icon=":material/history:"):
        if events:
            st.dataframe(events_frame(events), hide_index=True, width="stretch", key="registry_events")
            st.caption(
                f'The latest {EVENTS_SHOWN} promotions and roll backs. By "command line": made outside '
                "the app (e.g. the first start). Promotions before these records began are not listed."
            )
        else:
            st.info("No promotion or roll back has been recorded yet.")
