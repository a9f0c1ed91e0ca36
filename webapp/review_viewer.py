"""The X-ray viewer of the Review page: invert, NIH boxes, CAM overlay with its colour scale, window
presets with a fine level/width control, and the reader's verdict on the heat map.

Drawn in a fragment, so changing the picture reruns only the viewer; the figure keeps the reader's
zoom and pan across those changes (webapp.viewer's uirevision) and resets it for the next image.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from core.inference.predictor import Prediction
from core.labels import FINDINGS
from webapp import review_data, review_form, review_image
from webapp.formatting import pretty
from webapp.review_data import PRESENT, ReviewTarget
from webapp.review_image import MOST_PROBABLE
from webapp.viewer import PLOTLY_CONFIG, WINDOW_PRESETS, preset_window, window_bounds, xray_figure


def _apply_preset(pixels: np.ndarray) -> None:
    preset = st.session_state.get("review_preset") or "Full"
    st.session_state["review_level"], st.session_state["review_width"] = preset_window(pixels, preset)


def _window_for(target: ReviewTarget, pixels: np.ndarray) -> None:
    """The chosen preset, applied anew to each image opened (its percentiles are the image's own)."""
    state = st.session_state
    state.setdefault("review_preset", "Full")
    if state.get("review_window_image") != target.image_id:
        state["review_window_image"] = target.image_id
        _apply_preset(pixels)


def _feedback(user_id: int, target: ReviewTarget, model_name: str, finding: str) -> None:
    given = review_data.cam_feedback(user_id, target.image_id, model_name).get(finding)
    with st.container(horizontal=True, gap="small", vertical_alignment="center"):
        st.caption(f"Does the heat map point at {pretty(finding)}?")
        for points_at, text in ((True, "At the finding"), (False, "Elsewhere")):
            chosen = given is points_at
            st.button(
                text, key=f"review_cam_feedback_{points_at}", type="primary" if chosen else "secondary",
                icon=":material/check:" if chosen else None, on_click=review_data.save_cam_feedback,
                args=(user_id, target.image_id, model_name, finding, points_at),
            )  # fmt: skip


def _feedback_finding(target: ReviewTarget, finding: str | None) -> bool:
    """Heat-map feedback is asked for the image's positive findings (the reader's answer, the NLP label)."""
    if finding is None:
        return False
    answer = st.session_state.get(review_form.answer_key()) or {}
    marked = (answer.get("states") or {}).get(finding) == PRESENT
    return marked or bool(target.ai_shown and target.nlp and target.nlp.get(finding))


@st.fragment
def viewer(
    user_id: int, target: ReviewTarget, pixels: np.ndarray, prediction: Prediction | None,
    model_name: str | None, model_problem: str | None,
) -> None:  # fmt: skip
    _window_for(target, pixels)
    with st.container(horizontal=True, gap="medium", vertical_alignment="center"):
        invert = st.toggle("Invert", key="review_invert")
        show_boxes = st.toggle(
            "NIH boxes", value=True, key="review_boxes", disabled=not target.boxes,
            help="The dataset's bounding boxes (only some test-split images have them).",
        )  # fmt: skip
        show_cam = st.toggle(
            "CAM overlay", key="review_cam", disabled=prediction is None,
            help=model_problem or "Where the active model looked for the chosen finding.",
        )  # fmt: skip
    st.segmented_control(
        "Window", list(WINDOW_PRESETS), key="review_preset", on_change=_apply_preset, args=(pixels,),
        help="Presets from this image's own grey levels: Lung stretches the dark fields, Bone the bright.",
    )  # fmt: skip
    controls = st.columns(2)
    level = controls[0].slider(
        "Level", 0, 255, key="review_level", help="The grey level at the window's centre."
    )
    width = controls[1].slider(
        "Width", 2, 256, key="review_width", help="How many grey levels the window spans."
    )
    cam_choice, opacity = MOST_PROBABLE, 0.45
    if prediction is not None and show_cam:
        cam_row = st.columns([3, 2], vertical_alignment="bottom")
        cam_choice = cam_row[0].selectbox(
            "CAM finding", [MOST_PROBABLE, *FINDINGS], key="review_cam_finding",
            format_func=lambda choice: review_image.cam_choice_text(prediction, choice),
        )  # fmt: skip
        opacity = cam_row[1].slider("CAM opacity", 0.0, 1.0, 0.45, 0.05, key="review_cam_opacity")
    shown, cam_finding = review_image.viewer_picture(
        pixels, window_bounds(level, width), invert, prediction, cam_choice if show_cam else None, opacity
    )
    boxes = [(b.finding, b.x, b.y, b.w, b.h) for b in target.boxes] if show_boxes else []
    figure = xray_figure(shown, boxes, 580, uirevision=target.image_id, cam_scale=cam_finding)
    st.plotly_chart(figure, config=PLOTLY_CONFIG, key="review_figure", width="stretch")
    st.caption(review_image.viewer_notes(boxes, cam_finding))
    if model_name and _feedback_finding(target, cam_finding):
        _feedback(user_id, target, model_name, cam_finding)
