"""Review labels: clinicians correct ChestX-ray14's NLP-mined labels, one image at a time.

The image on screen is a snapshot (review_data.ReviewTarget) taken when it was opened, with the study
settings of that moment: blinded (on by default) the reader sees no other reader's answer, the
consensus or the number of reviews; AI-hidden they see neither the NLP label nor the model. The save
is checked against the version of the reader's own review in the snapshot, so a change made meanwhile
is refused instead of overwritten. Everything slow (the file, the model) is computed before the first
element of the image is drawn, so the new image and its own answer appear together.

The reading layout (webapp.review_layout): one slim top row (title, queue, what is left, the reader's
Show AI choice for the session, Open, and the help behind "?"), then the X-ray filling the window's
height under a compact toolbar (webapp.review_viewer; W shows the patient's prior study beside it), and
beside it the answer with Save & next on top (webapp.review_panel), all on the first screen from
1024x768 up. The navigation sidebar starts collapsed on this page (one click on » opens it).
"""

from __future__ import annotations

import random

import streamlit as st

from webapp.auth import require_role

user = require_role("clinician", "admin")

from core.labels import FINDINGS  # noqa: E402
from webapp import review_data, review_form, review_image, review_layout, review_topbar, review_viewer  # noqa: E402
from webapp.database import engine_or_stop  # noqa: E402
from webapp.formatting import plain, pretty, show_flash  # noqa: E402
from webapp.review_data import ASSIGNMENTS, STRATEGIES, ReviewTarget  # noqa: E402
from webapp.review_panel import actions, answer_panel, label_details  # noqa: E402
from webapp.review_viewer import viewer  # noqa: E402

state = st.session_state
# The reading layout wants every pixel of the width: the navigation is one click away (») at the top left.
st.set_page_config(initial_sidebar_state="collapsed")
review_layout.reading_css()

engine_or_stop()
if review_data.image_count() == 0:
    st.title("Review labels")
    st.info(
        "The database holds no images yet, so there is nothing to review. Import ChestX-ray14 first: an "
        "admin can do it on the admin page, or run `python -m db import /path/to/ChestX-ray14` on the server "
        "(the folder with Data_Entry_2017*.csv and images/)."
    )
    st.stop()

state.setdefault("review_seed", random.randrange(1_000_000))
state.setdefault("review_skipped", [])
state.setdefault("review_show_ai", True)
if "review_strategy" not in state:  # readers with open assignments start there
    has_work = review_data.has_open_assignments(user.id)
    state["review_strategy"] = "My assignments" if has_work else "Model disagrees most"

# One slim row: title, queue, what is left, the reader's AI choice, open by name, and the help behind "?".
topbar = st.container(horizontal=True, gap="small", vertical_alignment="center", key="review_topbar")
with topbar:
    st.title("Review labels", anchor=False)
    strategy_label = st.selectbox(
        "Queue", list(STRATEGIES), key="review_strategy", label_visibility="collapsed", width=210,
        help="My assignments: the images an admin gave you to read. Model disagrees most: where the active "
        "model's stored prediction is furthest from the current label. Images you reviewed are never in a "
        "queue.",
    )  # fmt: skip
strategy = STRATEGIES[strategy_label]
finding_choice = split_choice = None
with topbar:
    if strategy == "finding":
        finding_choice = st.selectbox(
            "Finding", FINDINGS, key="review_finding", format_func=pretty, label_visibility="collapsed",
            width=170,
        )  # fmt: skip
    elif strategy == "split":
        split_options = review_data.splits() or ["train_val", "test"]
        split_choice = st.selectbox(
            "Split", split_options, key="review_split", label_visibility="collapsed", width=130
        )
queue = review_form.current_queue(user.id, strategy, finding_choice, split_choice, state["review_seed"])

skipped_count = len(state["review_skipped"])
target: ReviewTarget | None = state.get("review_target")
with topbar:
    if queue.assigned is not None:
        done, total = queue.assigned
        st.progress(done / total if total else 0.0, text=f"{done:,} of {total:,} assigned read", width=150)
    st.metric(
        "Left in this queue", f"{queue.remaining:,}", width="content",
        help=f"Images in this queue you have not reviewed yet ({skipped_count} skipped this session).",
    )  # fmt: skip
    st.space("stretch")
    review_topbar.ai_choice(user.id, target)
    review_topbar.open_popover(user.id)
    review_topbar.help_popover()
    review_layout.viewport_probe()

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
    with st.container(key="review_messages"):
        show_flash()
    st.stop()

# Everything slow first: the new image and its answer then reach the browser together.
review_form.ensure_form(target)
pixels, pixel_problem = review_image.xray_pixels(target)
prediction, predictor, model_problem = None, None, None  # the served model, resolved once per run
if pixels is not None and target.ai_shown:
    prediction, predictor, model_problem = review_image.model_prediction(target, pixels)
elif pixels is not None:
    model_problem = "AI hidden in this read: the model's output is not shown."

with st.container(horizontal=True, gap="medium"):
    with st.container(key="review_viewer_column", width="stretch", gap="xsmall"):
        if pixels is None:
            st.error(pixel_problem)
        else:
            viewer(user.id, target, pixels, prediction, predictor.name if predictor else None, model_problem)
    with st.container(key="review_answer_column", width=review_layout.ANSWER_WIDTH, gap="xsmall"):
        with st.container(horizontal=True, gap="small", vertical_alignment="center", key="review_title"):
            st.subheader(plain(target.name), anchor=False, width="content")
            st.caption(review_image.image_details(target), width="content")
        with st.container(key="review_messages", gap="xxsmall"):
            # Fixed slots: whether or not a message shows, the elements below keep their place.
            if queue.notice:
                st.info(queue.notice, icon=":material/info:")
            show_flash()
        if pixels is None:  # nobody labels an image they cannot see
            st.info("This image cannot be reviewed without its file; skip it, or ask an admin to re-import.")
            if st.button("Skip", key="review_skip_unreadable", icon=":material/skip_next:"):
                review_form.skip(target.image_id)
                st.rerun()
            st.stop()
        actions(user.id, target)
        answer_panel(user.id, target, prediction)
        label_details(target, prediction, predictor)

# Everything is on screen: read the next image of the queue ahead (its file and the model's output).
upcoming = review_form.upcoming_image()
if upcoming is not None:
    upcoming_path = review_data.image_path(upcoming)
    review_image.read_ahead(upcoming, upcoming_path, predictor)
    review_viewer.read_ahead_picture(user.id, target, upcoming, upcoming_path)
