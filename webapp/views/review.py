"""Review labels: clinicians correct ChestX-ray14's NLP-mined labels, one image at a time.

The image on screen is a snapshot (review_data.ReviewTarget) taken when it was opened; the save is
checked against the version of the reviewer's own review in that snapshot, so a change made
meanwhile (another tab, another device) is refused instead of overwritten, and the reviewer's input
stays on screen.
"""

from __future__ import annotations

import random

import pandas as pd
import streamlit as st

from webapp.auth import require_role

user = require_role("clinician", "admin")

from core.cam import render_overlay  # noqa: E402
from core.imaging import ImageRejected, read_xray_file  # noqa: E402
from core.labels import FINDINGS, NO_FINDING  # noqa: E402
from db.errors import DbUserError, StaleReviewError  # noqa: E402
from webapp import review_data  # noqa: E402
from webapp.database import engine_or_stop  # noqa: E402
from webapp.model_loader import active_artifact, is_validated, load_active_predictor  # noqa: E402
from webapp.review_data import STRATEGIES, LabelValues, ReviewTarget, label_text, status_sentence  # noqa: E402
from webapp.viewer import PLOTLY_CONFIG, apply_window, xray_figure  # noqa: E402

MOST_PROBABLE = "__most_probable__"
CACHED_PREDICTIONS = 8
state = st.session_state


def pretty(finding: str) -> str:
    return finding.replace("_", " ")


# ----------------------------------------------------------------------------------------------------
# Opening images and moving through the queue


def form_keys() -> dict[str, str]:
    """Widget keys of the form: the 14 findings, "no_finding", "exclude", "comment".

    The keys change with every image opened. A click that interrupts a run still sends the browser's
    values of the previous form, and with the same keys those would overwrite the new image's label.
    """
    token = state.get("review_form_token", 0)
    keys = {finding: f"review_{token}_f_{finding}" for finding in FINDINGS}
    keys.update({name: f"review_{token}_{name}" for name in ("no_finding", "exclude", "comment")})
    return keys


def write_form(values: LabelValues) -> None:
    """Show a label in a fresh form (only before the form is drawn in a run, or in callbacks)."""
    for key in form_keys().values():
        state.pop(key, None)
    state["review_form_token"] = state.get("review_form_token", 0) + 1
    keys = form_keys()
    for finding in FINDINGS:
        state[keys[finding]] = bool(values.findings.get(finding, False))
    state[keys["no_finding"]] = values.no_finding
    state[keys["exclude"]] = values.exclude
    state[keys["comment"]] = values.comment


def open_image(image_id: int) -> None:
    target = review_data.load_target(image_id, user.id)
    state["review_target"] = target
    state["review_problem"] = None
    state["review_stale"] = False
    write_form(target.prefill())


def next_image() -> None:
    """Open the first image of the queue the reviewer has not skipped (or none: the queue is done)."""
    queue = state["review_queue"]
    skipped = set(state["review_skipped"])
    item = next((item for item in queue.items if item.image_id not in skipped), None)
    state["review_target"] = None
    state["review_reason"] = None
    if item is not None:
        open_image(item.image_id)
        if item.score is not None and item.top_finding:
            state["review_reason"] = (
                f"In this queue because the model disagrees most on {pretty(item.top_finding)} "
                f"(|probability − label| = {item.score:.2f})."
            )


def reload_queue(strategy: str, finding: str | None, split: str | None) -> None:
    limit = 50 + len(state["review_skipped"])
    state["review_queue"] = review_data.load_queue(
        user.id, strategy, finding=finding, split=split, seed=state["review_seed"], limit=limit
    )


def open_by_name() -> None:
    name = state.get("review_open_name", "")
    image_id = review_data.find_image_id(name)
    if image_id is None:
        state["review_open_problem"] = f"There is no image named “{name.strip()}” in the database."
        return
    state["review_open_problem"] = None
    open_image(image_id)
    state["review_reason"] = "Opened by name."


def reload_saved_version() -> None:
    target = state.get("review_target")
    if target is not None:
        open_image(target.image_id)


def show_skipped_again() -> None:
    state["review_skipped"] = []
    state["review_queue"] = None


# ----------------------------------------------------------------------------------------------------
# Image, model output


def xray_pixels(target: ReviewTarget):
    """(uint8 grey pixels, None) or (None, a sentence why the image cannot be shown)."""
    cached = state.get("review_pixels")
    if cached is not None and cached[0] == target.image_id:
        return cached[1], None
    if not target.path:
        return None, f"The file of {target.name} was not imported (the dataset was imported without images)."
    try:
        image = read_xray_file(target.path)
    except FileNotFoundError:
        return None, f"The file of {target.name} is missing at {target.path}."
    except (OSError, ImageRejected) as exc:
        return None, f"The file of {target.name} cannot be read: {exc}"
    state["review_pixels"] = (target.image_id, image.pixels)
    return image.pixels, None


def model_prediction(target: ReviewTarget, pixels):
    """(Prediction | None, predictor | None, problem) for the image, computed once per image and model."""
    predictor, problem = load_active_predictor()
    if predictor is None:
        return None, None, problem
    cache: dict = state.setdefault("review_predictions", {})
    key = (target.image_id, predictor.name, id(predictor))
    if key not in cache:
        with st.spinner("Running the model…"):
            cache[key] = predictor.predict_one(pixels)
        while len(cache) > CACHED_PREDICTIONS:
            cache.pop(next(iter(cache)))
    return cache[key], predictor, None


def label_table(target: ReviewTarget, prediction) -> pd.DataFrame:
    effective = target.effective.findings
    return pd.DataFrame(
        {
            "Finding": [pretty(f) for f in FINDINGS],
            "Model": [prediction.probabilities.get(f) if prediction else None for f in FINDINGS],
            "Current": [bool(effective[f]) for f in FINDINGS],
            "NLP": [bool(target.nlp[f]) if target.nlp else None for f in FINDINGS],
        }
    )


# ----------------------------------------------------------------------------------------------------
# Page

st.title("Review labels")
st.caption(
    "Correct the NLP-mined ChestX-ray14 labels. Your review is saved under your name; the reviews of "
    "several clinicians form the image's consensus label. Research use only — not for diagnosis."
)

engine_or_stop()
if review_data.image_count() == 0:
    st.info(
        "The database holds no images yet, so there is nothing to review. Import ChestX-ray14 first: an "
        "admin can do it on the admin page, or run `python -m db import /path/to/ChestX-ray14` on the server "
        "(the folder with Data_Entry_2017*.csv and images/)."
    )
    st.stop()

state.setdefault("review_seed", random.randrange(1_000_000))
state.setdefault("review_skipped", [])

queue_bar = st.columns([3, 3, 2, 2], vertical_alignment="bottom")
strategy_label = queue_bar[0].selectbox(
    "Queue", list(STRATEGIES), key="review_strategy",
    help="Model disagrees most: images where the active model's stored prediction is furthest from the "
    "current label (active learning). Images you have reviewed are never in a queue.",
)  # fmt: skip
strategy = STRATEGIES[strategy_label]
finding_choice = split_choice = None
if strategy == "finding":
    finding_choice = queue_bar[1].selectbox("Finding", FINDINGS, key="review_finding", format_func=pretty)
elif strategy == "split":
    split_options = review_data.splits() or ["train_val", "test"]
    split_choice = queue_bar[1].selectbox("Split", split_options, key="review_split")

queue_key = (strategy, finding_choice, split_choice)
if state.get("review_queue") is None or state.get("review_queue_key") != queue_key:
    reload_queue(strategy, finding_choice, split_choice)
    state["review_queue_key"] = queue_key
    next_image()
queue = state["review_queue"]

skipped_count = len(state["review_skipped"])
queue_bar[2].metric(
    "Left in this queue", f"{queue.remaining:,}",
    help=f"Images in this queue you have not reviewed yet ({skipped_count} skipped this session).",
)  # fmt: skip
with queue_bar[3].popover("Open an image", icon=":material/search:", width="stretch"):
    with st.form("review_open_form", border=False):
        st.text_input("Image index", key="review_open_name", placeholder="00000001_000.png")
        st.form_submit_button("Open", key="review_open", on_click=open_by_name)
    if state.get("review_open_problem"):
        st.error(state["review_open_problem"])

# Fixed slots: whether or not a message shows, the elements below keep their place in the page.
notice_slot, flash_slot = st.empty(), st.empty()
if queue.notice:
    notice_slot.info(queue.notice, icon=":material/info:")
flash = state.pop("review_flash", None)
if flash:
    flash_slot.success(flash, icon=":material/check_circle:")

target: ReviewTarget | None = state.get("review_target")
if target is None:
    if skipped_count:
        st.info(f"Nothing is left in this queue except the {skipped_count} image(s) you skipped.")
        st.button("Show the skipped images again", on_click=show_skipped_again, key="review_unskip")
    else:
        st.success("You have reviewed every image in this queue. Choose another queue above.")
    st.stop()

if form_keys()[FINDINGS[0]] not in state:  # the form's state was dropped (e.g. after visiting another page)
    write_form(target.prefill())
keys = form_keys()

patient = f"patient {target.patient_id}" if target.patient_id else ""
details = [target.split or "no split", target.view or "", patient]
viewer_column, label_column = st.columns([7, 5], gap="large")

with viewer_column:
    st.subheader(target.name, anchor=False)
    st.caption(" · ".join(part for part in details if part))
    pixels, pixel_problem = xray_pixels(target)
    prediction = None
    if pixels is None:
        st.error(pixel_problem)
    else:
        prediction, predictor, model_problem = model_prediction(target, pixels)
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
        sliders = st.columns([4, 5, 3], vertical_alignment="bottom")
        low, high = sliders[0].slider(
            "Window (grey levels)", 0, 255, (0, 255), key="review_window",
            help="Narrow the range to raise the contrast: grey levels below it turn black, above it white.",
        )  # fmt: skip
        cam_choice, opacity = MOST_PROBABLE, 0.45
        if prediction is not None:
            top = prediction.most_probable()
            cam_choice = sliders[1].selectbox(
                "CAM finding", [MOST_PROBABLE, *FINDINGS], key="review_cam_finding", disabled=not show_cam,
                format_func=lambda f: f"Top: {pretty(top)} {prediction.probabilities[top]:.2f}"
                if f == MOST_PROBABLE else f"{pretty(f)} {prediction.probabilities[f]:.2f}",
            )  # fmt: skip
            opacity = sliders[2].slider(
                "CAM opacity", 0.0, 1.0, 0.45, 0.05, key="review_cam_opacity", disabled=not show_cam
            )

        shown = apply_window(pixels, low, high, invert)
        cam_label = None
        if show_cam and prediction is not None:
            cam_label = prediction.most_probable() if cam_choice == MOST_PROBABLE else cam_choice
            shown = render_overlay(shown, prediction.cam(cam_label), opacity)
        boxes = [(b.finding, b.x, b.y, b.w, b.h) for b in target.boxes] if show_boxes else []
        st.plotly_chart(xray_figure(shown, boxes), config=PLOTLY_CONFIG, key="review_figure", width="stretch")
        notes = ["Scroll to zoom, drag to pan, double-click to reset."]
        if boxes:
            notes.append("Boxes: " + ", ".join(sorted({pretty(b[0]) for b in boxes})) + " (NIH).")
        if cam_label:
            notes.append(f"CAM of {pretty(cam_label)}, over the centre square the model saw.")
        st.caption(" ".join(notes))

with label_column:
    st.markdown(f":material/group: **{status_sentence(target.effective)}**")
    if target.own is not None:
        st.caption(
            f"You reviewed this image before (version {target.own_version}); saving updates your review."
        )
    if state.get("review_reason"):
        st.caption(state["review_reason"])
    message_slot = st.container()
    if pixels is None:  # nobody labels an image they cannot see
        st.info("This image cannot be reviewed without its file; skip it or ask an admin to re-import it.")
        if st.button("Skip", key="review_skip_unreadable", icon=":material/skip_next:"):
            state["review_skipped"] = [*state["review_skipped"], target.image_id]
            state["review_queue"] = None
            st.rerun()
        st.stop()

    with st.form("review_form", enter_to_submit=True, border=True):
        finding_columns = st.columns(2)
        # Column by column in FINDINGS order, so the Tab key walks the findings in reading order.
        per_column = -(-len(FINDINGS) // len(finding_columns))
        ticked = {}
        for index, finding in enumerate(FINDINGS):
            with finding_columns[index // per_column]:
                ticked[finding] = st.checkbox(pretty(finding), key=keys[finding])
        no_finding = st.checkbox(
            NO_FINDING, key=keys["no_finding"], help="Not together with any finding above."
        )
        exclude = st.checkbox(
            "Not diagnostic quality — exclude", key=keys["exclude"],
            help="Leaves the image out of training and evaluation when most reviewers exclude it.",
        )  # fmt: skip
        comment = st.text_input("Comment", key=keys["comment"], placeholder="Optional — Enter saves")
        with st.container(horizontal=True, gap="small"):
            save_clicked = st.form_submit_button("Save & next", type="primary", key="review_save",
                                                 icon=":material/check:")
            skip_clicked = st.form_submit_button("Skip", key="review_skip", icon=":material/skip_next:")

    if save_clicked:
        values = LabelValues(ticked, no_finding, exclude, comment)
        if no_finding and any(ticked.values()):
            state["review_problem"] = (
                f"“{NO_FINDING}” cannot be saved together with findings "
                f"({label_text(ticked)}); untick one or the other."
            )
            state["review_stale"] = False
        else:
            try:
                version, effective = review_data.save(user.id, target, values)
            except StaleReviewError as exc:
                state["review_problem"], state["review_stale"] = str(exc), True
            except DbUserError as exc:
                state["review_problem"], state["review_stale"] = str(exc), False
            else:
                state["review_flash"] = (
                    f"Saved your review of {target.name} (version {version}). {status_sentence(effective)}."
                )
                state["review_queue"] = None  # reloaded on the rerun: the saved image leaves the queue
                st.rerun()
    elif skip_clicked:
        state["review_skipped"] = [*state["review_skipped"], target.image_id]
        state["review_queue"] = None
        st.rerun()

    if state.get("review_problem"):
        with message_slot:
            st.error(state["review_problem"], icon=":material/error:")
            if state.get("review_stale"):
                st.button("Discard my input and load the saved version", key="review_reload",
                          on_click=reload_saved_version, icon=":material/refresh:")

    artifact = active_artifact()
    model_note = "Model: probability of the active model"
    if artifact is not None and not is_validated(artifact):
        model_note += " (unvalidated: scores for testing the software only)"
    st.dataframe(
        label_table(target, prediction),
        hide_index=True,
        width="stretch",
        height=(len(FINDINGS) + 1) * 35 + 3,
        column_config={
            "Finding": st.column_config.TextColumn("Finding", width=135),
            "Model": st.column_config.ProgressColumn("Model", min_value=0.0, max_value=1.0, format="%.2f",
                                                     help=model_note, width=110),
            "Current": st.column_config.CheckboxColumn("Label", help="The image's effective label now.",
                                                       width=55),
            "NLP": st.column_config.CheckboxColumn("NLP", help="The dataset's NLP-mined label.", width=55),
        },
    )
    if target.google:
        google = ", ".join(
            f"{name}: {'yes' if value else 'no'}"
            for name, value in target.google.items()
            if name != "set_id" and value is not None
        )
        st.caption(f"Google 2019 radiologist-adjudicated labels — {google}.")
