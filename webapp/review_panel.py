"""The reader's answer beside the X-ray: Save & next / Skip / Undo on top, then one button per finding
in two columns of seven (Present; the "?" beside it: Uncertain), No Finding, exclude, comment and reason
codes, each with its hotkey; below them what the reader may see of the labels (the model and NLP label,
AI-first; the current label, unblinded). Save sits above the findings so that reason codes opening
under them never push it off the screen.

The buttons keep their keys from image to image (they hold no value, the answer lives in the session
state under a key of its own per image), so the browser updates them instead of building them anew;
a key pressed while the next image opens applies to that next image. The answer is drawn in a
fragment: a click (or its key) reruns only the answer, not the viewer. Save & next, Skip and Undo sit
outside it: they open another image, so their click reruns the whole page at once (their callbacks
run first), one script run from the key press to the next image.
"""

from __future__ import annotations

import streamlit as st

from core.inference.predictor import Prediction, Predictor
from core.labels import FINDINGS, NO_FINDING
from db.label_rules import REASON_CODES
from webapp import review_form, review_image
from webapp.formatting import pretty
from webapp.review_data import ABSENT, PRESENT, UNCERTAIN, ReviewTarget, status_sentence
from webapp.review_form import EXCLUDE_KEY, FINDING_KEYS, NO_FINDING_KEY, SAVE_KEY, SKIP_KEY, UNDO_KEY

STATE_ICONS = {
    PRESENT: ":material/check_box:",
    UNCERTAIN: ":material/help:",
    ABSENT: ":material/check_box_outline_blank:",
}
# The "?" buttons' own shortcut badges would squeeze the finding names at 1024 px; the legend says them.
_CSS = "<style>[class*='st-key-review_'][class*='_u_'] [aria-label^='Shortcut'] {display: none;}</style>"


def hotkey_legend() -> str:
    findings = " · ".join(f"{key} {pretty(finding)}" for finding, key in FINDING_KEYS.items())
    return (
        f"Keys: {findings} · Shift + key: Uncertain · {NO_FINDING_KEY}: {NO_FINDING} · "
        f"{EXCLUDE_KEY}: exclude · {SAVE_KEY}: save & next · {SKIP_KEY}: skip · {UNDO_KEY}: undo last save "
        "(not while typing a comment)."
    )


def _heading(target: ReviewTarget) -> None:
    if target.blinded:
        shown = "NLP label and model shown" if target.ai_shown else "AI hidden"
        st.caption(f":material/visibility_off: Blinded read: other readers' answers hidden; {shown}.")
    else:
        st.markdown(f":material/group: **{status_sentence(target.effective)}**")
    if target.own is not None:
        st.caption(
            f"You reviewed this image before (version {target.own_version}); saving updates your review."
        )
    if st.session_state.get("review_reason"):
        st.caption(st.session_state["review_reason"])


def _finding_button(finding: str, state: str) -> None:
    key = FINDING_KEYS[finding]
    with st.container(horizontal=True, gap="xxsmall", vertical_alignment="center"):
        st.button(
            pretty(finding), key=f"review_f_{finding}", shortcut=key, icon=STATE_ICONS[state],
            type="primary" if state == PRESENT else "secondary", width="stretch",
            on_click=review_form.toggle_finding, args=(finding,),
            help=f"{pretty(finding)}: present ({key}); again to clear.",
        )  # fmt: skip
        st.button(
            "?", key=f"review_u_{finding}", shortcut=f"Shift+{key}",
            type="primary" if state == UNCERTAIN else "tertiary",
            on_click=review_form.toggle_uncertain, args=(finding,),
            help=f"{pretty(finding)}: uncertain (Shift+{key}); again to clear.",
        )  # fmt: skip


def _finding_grid() -> None:
    """Two columns of seven, in CheXNet order down each column."""
    states = review_form.answer()["states"]
    half = (len(FINDINGS) + 1) // 2
    with st.container(horizontal=True, gap="xsmall", key="review_grid"):
        for part in (FINDINGS[:half], FINDINGS[half:]):
            with st.container(gap="xxsmall", width="stretch"):
                for finding in part:
                    _finding_button(finding, states[finding])


def _reasons(target: ReviewTarget) -> None:
    """Reason codes of each finding marked Uncertain, or left Absent against a positive NLP label."""
    states = review_form.answer()["states"]
    for finding in FINDINGS:
        nlp_positive = bool(target.ai_shown and target.nlp and target.nlp.get(finding))
        if states[finding] == UNCERTAIN or (states[finding] == ABSENT and nlp_positive):
            review_form.prepare_reasons(finding)
            st.pills(
                f"Why ({pretty(finding)}, optional)", list(REASON_CODES), selection_mode="multi",
                format_func=REASON_CODES.get, key=review_form.reasons_key(finding),
                on_change=review_form.store_reasons, args=(finding,),
            )  # fmt: skip


@st.fragment
def answer_panel(user_id: int, target: ReviewTarget, prediction: Prediction | None) -> None:
    st.html(_CSS)
    _heading(target)
    message_slot = st.container()
    _finding_grid()
    now = review_form.answer()
    with st.container(horizontal=True, gap="xsmall", key="review_marks"):
        st.button(
            NO_FINDING, key="review_no_finding", shortcut=NO_FINDING_KEY, width="stretch",
            icon=STATE_ICONS[PRESENT if now["no_finding"] else ABSENT],
            type="primary" if now["no_finding"] else "secondary", on_click=review_form.toggle_no_finding,
            help="No finding at all; clears every finding above (and a finding clears it).",
        )  # fmt: skip
        st.button(
            "Exclude", key="review_exclude", shortcut=EXCLUDE_KEY, width="stretch",
            icon=STATE_ICONS[PRESENT if now["exclude"] else ABSENT],
            type="primary" if now["exclude"] else "secondary", on_click=review_form.toggle_exclude,
            help="Not diagnostic quality: leaves the image out of training and evaluation.",
        )  # fmt: skip
    comment_key = review_form.comment_key()
    st.text_input("Comment", key=comment_key, placeholder="Comment (optional)", label_visibility="collapsed")
    _reasons(target)
    if st.session_state.get("review_problem"):
        with message_slot:
            st.error(st.session_state["review_problem"], icon=":material/error:")
            if st.session_state.get("review_stale"):
                st.button(
                    "Discard my input and load the saved version", key="review_reload",
                    on_click=review_form.reload_saved_version, args=(user_id,), icon=":material/refresh:",
                )  # fmt: skip


def actions(user_id: int, target: ReviewTarget) -> None:
    """Save & next, Skip, Undo last save: whole-page reruns (outside the answer's fragment)."""
    with st.container(horizontal=True, gap="xsmall", key="review_actions"):
        st.button(
            "Save & next", key="review_save", type="primary", icon=":material/check:", shortcut=SAVE_KEY,
            on_click=review_form.submit, args=(user_id, target), width="stretch",
        )  # fmt: skip
        st.button(
            "Skip", key="review_skip", icon=":material/skip_next:", shortcut=SKIP_KEY,
            on_click=review_form.skip, args=(target.image_id,),
        )  # fmt: skip
        st.button(
            "Undo", key="review_undo", icon=":material/undo:", shortcut=UNDO_KEY,
            on_click=review_form.undo_last_save, args=(user_id,),
            help="Undo last save: reopen the image you saved last, to change your answer.",
        )  # fmt: skip


def label_details(target: ReviewTarget, prediction: Prediction | None, predictor: Predictor | None) -> None:
    """What the reader may see beside the answer (the model and NLP label in AI-first, the current label
    without blinding); `predictor`: the model of this run's `prediction`."""
    table = review_image.label_table(target, prediction)
    if table is not None:
        st.dataframe(
            table, hide_index=True, width="stretch", height=review_image.TABLE_HEIGHT,
            column_config=review_image.label_table_columns(predictor),
        )  # fmt: skip
    google = review_image.google_text(target) if target.ai_shown else None
    if google:
        st.caption(google)
