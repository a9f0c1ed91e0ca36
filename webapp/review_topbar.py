"""The Review page's slim top row, beyond the queue picker: the reader's AI choice for the session,
"Open an image" by name or number, and the page's help behind "?" (what the page is for, the hotkeys,
how the viewer works)."""

from __future__ import annotations

import streamlit as st

from webapp import review_form
from webapp.review_data import ReviewTarget
from webapp.review_panel import hotkey_legend
from webapp.review_viewer import viewer_keys_text

PAGE_HELP = (
    "Correct the NLP-mined ChestX-ray14 labels: each finding Present, Absent or Uncertain. Your review is "
    "saved under your name; readers who differ are settled by an admin. Research use only, not for diagnosis."
)


def ai_choice(user_id: int, target: ReviewTarget | None) -> None:
    """Whether this session's reads show the NLP label (pre-ticked) and the model's scores before the
    reader answers; each review records which (AI-first / AI-hidden), as in an AI-hidden study."""
    allowed = target is None or target.ai_allowed
    help_text = (
        "On: the NLP label is pre-ticked and the model's scores and CAM are shown (AI-first). Off: you "
        "answer unaided (AI-hidden). Each review records which. Turning it off takes effect from the next "
        "image (you have seen this one's); turning it on, at once."
    )
    if not allowed:
        help_text = "This study hides the NLP label and the model from every reader (an admin's setting)."
    st.toggle(
        "Show AI", key="review_show_ai", disabled=not allowed, help=help_text,
        on_change=review_form.ai_choice_changed, args=(user_id,),
    )  # fmt: skip


def open_popover(user_id: int) -> None:
    popover = st.popover(
        "Open",
        icon=":material/search:",
        help="Open an image by number or name.",
        key="review_open_popover",
        on_change="rerun",  # stateful: opening an image closes it (review_form.open_by_name)
    )
    with popover:
        with st.form("review_open_form", border=False):
            examples = "556, #556, 00000001_000.png, a file name"
            st.text_input("Image", key="review_open_name", placeholder=examples)
            st.form_submit_button(
                "Open", key="review_open", on_click=review_form.open_by_name, args=(user_id,)
            )
        if st.session_state.get("review_open_problem"):
            st.error(st.session_state["review_open_problem"])


def help_popover() -> None:
    with st.popover("?", help="How this page works, and its keys."):
        st.caption(PAGE_HELP)
        st.caption(hotkey_legend())
        st.caption(viewer_keys_text())
