"""The X-ray viewer of the Review page: a compact toolbar (invert, NIH boxes, CAM, window presets, the
fine level/width window, reset zoom, the prior study), each an icon with a tooltip and a key, above a
stage that fills the window's height (webapp.review_layout).

Drawn in a fragment, so changing the picture reruns only the viewer; the figure keeps the reader's
zoom and pan across those changes (webapp.viewer's uirevision) and resets it for the next image or on
"reset zoom". The prior study (the patient's previous follow-up) is drawn beside the current image on
the same window, invert and boxes setting; the answer beside them is always the current image's.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import streamlit as st

from core.inference.predictor import Prediction
from core.labels import FINDINGS
from webapp import review_data, review_form, review_image, review_layout, review_prior
from webapp.formatting import pretty
from webapp.review_data import PRESENT, ReviewTarget
from webapp.review_image import MOST_PROBABLE
from webapp.viewer import PLOTLY_CONFIG, WINDOW_PRESETS, preset_window, window_bounds, xray_figure

INVERT_KEY, BOXES_KEY, CAM_KEY, RESET_KEY, PRIOR_KEY = "V", "B", "K", "0", "W"
PRESET_KEYS = {preset: str(number) for number, preset in enumerate(WINDOW_PRESETS, start=1)}
_FLAGS = {"review_invert": False, "review_boxes": True, "review_cam": False, "review_prior": False}


def viewer_keys_text() -> str:
    presets = ", ".join(f"{key} {preset}" for preset, key in PRESET_KEYS.items())
    return (
        f"Viewer keys: {INVERT_KEY} invert · {BOXES_KEY} NIH boxes · {CAM_KEY} CAM overlay · {presets} "
        f"(window presets) · {RESET_KEY} reset zoom · {PRIOR_KEY} prior study side by side. Scroll to zoom "
        "(up to the file's full resolution), drag to pan, double-click to reset; the zoom stays while you "
        "change the picture."
    )


def _flag(name: str) -> bool:
    return bool(st.session_state.get(f"{name}_on", _FLAGS[name]))


def _flip(name: str) -> None:
    st.session_state[f"{name}_on"] = not _flag(name)


def _set_preset(preset: str, pixels: np.ndarray) -> None:
    st.session_state["review_preset"] = preset
    st.session_state["review_level"], st.session_state["review_width"] = preset_window(pixels, preset)


def _reset_zoom() -> None:
    st.session_state["review_zoom_revision"] = st.session_state.get("review_zoom_revision", 0) + 1


def _window_for(target: ReviewTarget, pixels: np.ndarray) -> None:
    """The chosen preset, applied anew to each image opened (its percentiles are the image's own)."""
    state = st.session_state
    state.setdefault("review_preset", "Full")
    if state.get("review_window_image") != target.image_id:
        state["review_window_image"] = target.image_id
        state["review_zoom_revision"] = 0
        _set_preset(state["review_preset"], pixels)


def _toggle(name: str, icon: str, tip: str, key: str, disabled: bool = False) -> None:
    on = _flag(name) and not disabled
    st.button(
        "", key=name, icon=icon, type="primary" if on else "secondary", shortcut=key, disabled=disabled,
        help=f"{tip} ({key})", on_click=_flip, args=(name,),
    )  # fmt: skip


def _feedback(user_id: int, target: ReviewTarget, model_name: str, finding: str) -> None:
    given = review_data.cam_feedback(user_id, target.image_id, model_name).get(finding)
    st.caption(f"Does the heat map point at {pretty(finding)}?")
    with st.container(horizontal=True, gap="small"):
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


def _toolbar(
    target: ReviewTarget, pixels: np.ndarray, prediction: Prediction | None, model_problem: str | None
) -> st.delta_generator.DeltaGenerator:
    """The toolbar; returns the CAM settings' popover (filled once the CAM choice is known)."""
    with st.container(horizontal=True, gap="xxsmall", vertical_alignment="center", key="review_toolbar"):
        _toggle("review_invert", ":material/invert_colors:", "Invert", INVERT_KEY)
        _toggle(
            "review_boxes", ":material/crop_free:", "NIH boxes (only some test-split images have them)",
            BOXES_KEY, disabled=not target.boxes,
        )  # fmt: skip
        _toggle(
            "review_cam", ":material/local_fire_department:",
            model_problem or "CAM overlay: where the active model looked", CAM_KEY,
            disabled=prediction is None,
        )  # fmt: skip
        cam = st.popover("", icon=":material/tune:", help="CAM finding, opacity and your verdict on it.",
                         disabled=prediction is None or not _flag("review_cam"))  # fmt: skip
        st.space("xsmall")
        for preset, key in PRESET_KEYS.items():
            st.button(
                preset[:4] if preset != "Mediastinum" else "Med", key=f"review_preset_{preset}", shortcut=key,
                type="primary" if st.session_state.get("review_preset") == preset else "secondary",
                help=f"Window preset {preset} ({key}): from this image's own grey levels.",
                on_click=_set_preset, args=(preset, pixels),
            )  # fmt: skip
        with st.popover("", icon=":material/contrast:", help="Level and width of the window."):
            st.slider("Level", 0, 255, key="review_level", help="The grey level at the window's centre.")
            st.slider("Width", 2, 256, key="review_width", help="How many grey levels the window spans.")
        st.space("xsmall")
        st.button(
            "", key="review_reset_zoom", icon=":material/fit_screen:", shortcut=RESET_KEY,
            help=f"Reset zoom ({RESET_KEY})", on_click=_reset_zoom,
        )  # fmt: skip
        _toggle("review_prior", ":material/compare:", "Prior study of this patient, side by side", PRIOR_KEY)
    return cam


def read_ahead_picture(user_id: int, target: ReviewTarget, image_id: int, path: str | None) -> None:
    """Encode the next image (read ahead) as it will open: this session's preset and invert, no CAM;
    with the prior view on, look its prior up and read its file too (the settings of `target`, the
    image on screen, which the next one opens with unless the reader changes them)."""
    pixels = review_image.cached_pixels(image_id, path)
    if pixels is not None:
        preset = st.session_state.get("review_preset") or "Full"
        window = window_bounds(*preset_window(pixels, preset))
        review_image.windowed_picture(image_id, pixels, window, _flag("review_invert"))
    if _flag("review_prior"):
        prior = review_prior.prior_of(replace(target, image_id=image_id), user_id)
        if prior is not None:
            review_prior.read_ahead(prior)


@st.fragment
def viewer(
    user_id: int, target: ReviewTarget, pixels: np.ndarray, prediction: Prediction | None,
    model_name: str | None, model_problem: str | None,
) -> None:  # fmt: skip
    _window_for(target, pixels)
    cam = _toolbar(target, pixels, prediction, model_problem)
    show_cam = _flag("review_cam") and prediction is not None
    cam_choice, opacity = MOST_PROBABLE, 0.45
    if prediction is not None:
        with cam:
            cam_choice = st.selectbox(
                "CAM finding", [MOST_PROBABLE, *FINDINGS], key="review_cam_finding",
                format_func=lambda choice: review_image.cam_choice_text(prediction, choice),
            )  # fmt: skip
            opacity = st.slider("CAM opacity", 0.0, 1.0, 0.45, 0.05, key="review_cam_opacity")
    window = window_bounds(st.session_state["review_level"], st.session_state["review_width"])
    invert, show_boxes = _flag("review_invert"), _flag("review_boxes")
    shown, cam_finding = review_image.viewer_picture(
        target.image_id, pixels, window, invert, prediction, cam_choice if show_cam else None, opacity
    )
    boxes = [(b.finding, b.x, b.y, b.w, b.h) for b in target.boxes] if show_boxes else []
    # A new revision resets the zoom: "reset zoom", and the prior view on or off (another figure size).
    revision = st.session_state.get("review_zoom_revision", 0)
    side_by_side = _flag("review_prior")
    uirevision: object = target.image_id
    if revision or side_by_side:
        uirevision = f"{target.image_id}.{revision}.{side_by_side:d}"
    figure = xray_figure(shown, boxes, None, uirevision=uirevision, cam_scale=cam_finding)
    prior = review_prior.prior_of(target, user_id) if _flag("review_prior") else None
    if _flag("review_prior") and prior is None:
        st.caption(review_prior.caption(prior, target))
    if prior is not None:
        with st.container(horizontal=True, gap="small", key="review_stage_pair"):
            with st.container(key="review_stage_prior", gap="xxsmall"):
                st.caption(review_prior.caption(prior, target))
                review_prior.draw(prior, window, invert, uirevision)
            with st.container(key="review_stage_current", gap="xxsmall"):
                st.caption(review_prior.current_caption(prior, target))
                st.plotly_chart(figure, config=PLOTLY_CONFIG, key="review_figure", height="stretch")
    else:
        height = review_layout.stage_height()
        if height is not None:
            figure.update_layout(height=height)
        with st.container(key="review_stage"):
            st.plotly_chart(figure, config=PLOTLY_CONFIG, key="review_figure", height=height or "stretch")
    st.caption(review_image.viewer_notes(boxes, cam_finding))
    if model_name and show_cam and _feedback_finding(target, cam_finding):
        with cam:
            _feedback(user_id, target, model_name, cam_finding)
