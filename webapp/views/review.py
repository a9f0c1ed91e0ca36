"""Review labels: clinicians correct ChestX-ray14's NLP-mined labels, one image at a time.

The image on screen is a snapshot (review_data.ReviewTarget) taken when it was opened; the save is
checked against the version of the reviewer's own review in that snapshot, so a change made
meanwhile (another tab, another device) is refused instead of overwritten, and the reviewer's input
stays on screen. The state between reruns is kept by webapp.review_form.
"""

from __future__ import annotations

import random

import streamlit as st

from webapp.auth import require_role

user = require_role("clinician", "admin")

from core.labels import FINDINGS, NO_FINDING  # noqa: E402
from webapp import review_data, review_form, review_image  # noqa: E402
from webapp.database import engine_or_stop  # noqa: E402
from webapp.formatting import plain, pretty, show_flash  # noqa: E402
from webapp.review_data import STRATEGIES, LabelValues, ReviewTarget, status_sentence  # noqa: E402
from webapp.review_image import MOST_PROBABLE  # noqa: E402
from webapp.viewer import PLOTLY_CONFIG, xray_figure  # noqa: E402

state = st.session_state

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
queue = review_form.current_queue(user.id, strategy, finding_choice, split_choice, state["review_seed"])

skipped_count = len(state["review_skipped"])
queue_bar[2].metric(
    "Left in this queue", f"{queue.remaining:,}",
    help=f"Images in this queue you have not reviewed yet ({skipped_count} skipped this session).",
)  # fmt: skip
with queue_bar[3].popover("Open an image", icon=":material/search:", width="stretch"):
    with st.form("review_open_form", border=False):
        st.text_input("Image index", key="review_open_name", placeholder="00000001_000.png")
        st.form_submit_button("Open", key="review_open", on_click=review_form.open_by_name, args=(user.id,))
    if state.get("review_open_problem"):
        st.error(state["review_open_problem"])

# Fixed slots: whether or not a message shows, the elements below keep their place in the page.
notice_slot, flash_slot = st.empty(), st.empty()
if queue.notice:
    notice_slot.info(queue.notice, icon=":material/info:")
with flash_slot:
    show_flash()

target: ReviewTarget | None = state.get("review_target")
if target is None:
    if skipped_count:
        st.info(f"Nothing is left in this queue except the {skipped_count} image(s) you skipped.")
        st.button(
            "Show the skipped images again", on_click=review_form.show_skipped_again, key="review_unskip"
        )
    else:
        st.success("You have reviewed every image in this queue. Choose another queue above.")
    st.stop()

keys = review_form.ensure_form(target)
viewer_column, label_column = st.columns([7, 5], gap="large")

with viewer_column:
    st.subheader(plain(target.name), anchor=False)
    st.caption(review_image.image_details(target))
    pixels, pixel_problem = review_image.xray_pixels(target)
    prediction = None
    if pixels is None:
        st.error(pixel_problem)
    else:
        prediction, predictor, model_problem = review_image.model_prediction(target, pixels)
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
        window = sliders[0].slider(
            "Window (grey levels)", 0, 255, (0, 255), key="review_window",
            help="Narrow the range to raise the contrast: grey levels below it turn black, above it white.",
        )  # fmt: skip
        cam_choice, opacity = MOST_PROBABLE, 0.45
        if prediction is not None:
            cam_choice = sliders[1].selectbox(
                "CAM finding", [MOST_PROBABLE, *FINDINGS], key="review_cam_finding", disabled=not show_cam,
                format_func=lambda choice: review_image.cam_choice_text(prediction, choice),
            )  # fmt: skip
            opacity = sliders[2].slider(
                "CAM opacity", 0.0, 1.0, 0.45, 0.05, key="review_cam_opacity", disabled=not show_cam
            )
        shown, cam_finding = review_image.viewer_picture(
            pixels, window, invert, prediction, cam_choice if show_cam else None, opacity
        )
        boxes = [(b.finding, b.x, b.y, b.w, b.h) for b in target.boxes] if show_boxes else []
        st.plotly_chart(xray_figure(shown, boxes), config=PLOTLY_CONFIG, key="review_figure", width="stretch")
        st.caption(review_image.viewer_notes(boxes, cam_finding))

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
            review_form.skip(target.image_id)
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
            save_clicked = st.form_submit_button(
                "Save & next", type="primary", key="review_save", icon=":material/check:"
            )
            skip_clicked = st.form_submit_button("Skip", key="review_skip", icon=":material/skip_next:")

    if save_clicked:
        if review_form.submit(user.id, target, LabelValues(ticked, no_finding, exclude, comment)):
            st.rerun()
    elif skip_clicked:
        review_form.skip(target.image_id)
        st.rerun()

    if state.get("review_problem"):
        with message_slot:
            st.error(state["review_problem"], icon=":material/error:")
            if state.get("review_stale"):
                st.button(
                    "Discard my input and load the saved version",
                    key="review_reload",
                    on_click=review_form.reload_saved_version,
                    args=(user.id,),
                    icon=":material/refresh:",
                )

    st.dataframe(
        review_image.label_table(target, prediction),
        hide_index=True,
        width="stretch",
        height=review_image.TABLE_HEIGHT,
        column_config=review_image.label_table_columns(),
    )
    google = review_image.google_text(target)
    if google:
        st.caption(google)
