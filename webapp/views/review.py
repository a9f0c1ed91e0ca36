"""Review labels: clinicians correct ChestX-ray14's NLP-mined labels, one image at a time.

The image on screen is a snapshot (review_data.ReviewTarget) taken when it was opened, with the study
settings of that moment: blinded (on by default) the reader sees no other reader's answer, the
consensus or the number of reviews; AI-hidden they see neither the NLP label nor the model. The save
is checked against the version of the reader's own review in the snapshot, so a change made meanwhile
is refused instead of overwritten. Everything slow (the file, the model) is computed before the first
element of the image is drawn, so the new image and its own answer appear together.
"""

from __future__ import annotations

import random

import streamlit as st

from webapp.auth import require_role

user = require_role("clinician", "admin")

from core.labels import FINDINGS  # noqa: E402
from webapp import review_data, review_form, review_image  # noqa: E402
from webapp.database import engine_or_stop  # noqa: E402
from webapp.formatting import plain, pretty, show_flash  # noqa: E402
from webapp.review_data import ASSIGNMENTS, STRATEGIES, ReviewTarget  # noqa: E402
from webapp.review_panel import actions, answer_panel  # noqa: E402
from webapp.review_viewer import viewer  # noqa: E402

state = st.session_state
# A narrower page margin: at 1024 px the X-ray and the full finding names both need the room.
st.html("<style>.stMainBlockContainer {padding-left: 1.5rem; padding-right: 1.5rem;}</style>")

st.title("Review labels")
st.caption(
    "Correct the NLP-mined ChestX-ray14 labels: each finding Present, Absent or Uncertain. Your review is "
    "saved under your name; readers who differ are settled by an admin. Research use only, not for diagnosis."
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
if "review_strategy" not in state:  # readers with open assignments start there
    has_work = review_data.has_open_assignments(user.id)
    state["review_strategy"] = "My assignments" if has_work else "Model disagrees most"

queue_bar = st.columns([3, 3, 2, 3], vertical_alignment="bottom")
strategy_label = queue_bar[0].selectbox(
    "Queue", list(STRATEGIES), key="review_strategy",
    help="My assignments: the images an admin gave you to read. Model disagrees most: where the active "
    "model's stored prediction is furthest from the current label. Images you reviewed are never in a queue.",
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
if queue.assigned is not None:
    done, total = queue.assigned
    queue_bar[1].progress(done / total if total else 0.0, text=f"{done:,} of {total:,} assigned read")
queue_bar[2].metric(
    "Left in this queue", f"{queue.remaining:,}",
    help=f"Images in this queue you have not reviewed yet ({skipped_count} skipped this session).",
)  # fmt: skip
with queue_bar[3].popover("Open an image", icon=":material/search:", width="stretch"):
    with st.form("review_open_form", border=False):
        st.text_input("Image", key="review_open_name", placeholder="556, #556, 00000001_000.png, a file name")
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
    elif strategy == ASSIGNMENTS:
        st.success("You have read every image assigned to you. Choose another queue above, or ask an admin.")
    else:
        st.success("You have reviewed every image in this queue. Choose another queue above.")
    st.stop()

# Everything slow first: the new image and its answer then reach the browser together.
review_form.ensure_form(target)
pixels, pixel_problem = review_image.xray_pixels(target)
prediction, predictor, model_problem = None, None, None  # the served model, resolved once per run
if pixels is not None and target.ai_shown:
    prediction, predictor, model_problem = review_image.model_prediction(target, pixels)
elif pixels is not None:
    model_problem = "AI-hidden study: the model's output is not shown."

viewer_column, label_column = st.columns([3, 2], gap="medium")
with viewer_column:
    st.subheader(plain(target.name), anchor=False)
    st.caption(review_image.image_details(target))
    if pixels is None:
        st.error(pixel_problem)
    else:
        viewer(user.id, target, pixels, prediction, predictor.name if predictor else None, model_problem)

with label_column:
    if pixels is None:  # nobody labels an image they cannot see
        st.info("This image cannot be reviewed without its file; skip it or ask an admin to re-import it.")
        if st.button("Skip", key="review_skip_unreadable", icon=":material/skip_next:"):
            review_form.skip(target.image_id)
            st.rerun()
        st.stop()
    answer_panel(user.id, target, prediction)
    actions(user.id, target, prediction, predictor)

# Everything is on screen: read the next image of the queue ahead (its file and the model's output).
upcoming = review_form.upcoming_image()
if upcoming is not None:
    review_image.read_ahead(upcoming, review_data.image_path(upcoming), predictor)
