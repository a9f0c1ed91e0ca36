"""Adjudicate: the images whose readers disagree (any finding, ties included), each reader's answer
side by side with the NLP label, the model and the image, and the admin's decision with its reason.

A decision is an adjudication (db.reviews.adjudicate): it becomes the image's label, the dispute leaves
the queue, and the audit trail keeps who decided what and why (the image's history, below).
"""

from __future__ import annotations

import streamlit as st

from webapp.auth import require_role

user = require_role("admin")

from core.errors import UserError  # noqa: E402
from core.imaging.reader import ImageRejected, read_xray_file  # noqa: E402
from core.labels import FINDINGS  # noqa: E402
from webapp import adjudication_data as data  # noqa: E402
from webapp.database import engine_or_stop  # noqa: E402
from webapp.formatting import flash, plain, pretty, show_flash  # noqa: E402
from webapp.model_loader import load_active_predictor  # noqa: E402
from webapp.review_data import find_image_id  # noqa: E402
from webapp.viewer import PLOTLY_CONFIG, xray_figure  # noqa: E402

state = st.session_state

st.title("Adjudicate disputes")
st.caption(
    "Images on which readers differ, a 1–1 tie included: nothing is decided for them until an admin does. "
    "Your decision becomes the image's label; its reason goes into the image's history."
)
engine_or_stop()
show_flash()

items, n_open = data.disputes()
top = st.columns([5, 2, 3], vertical_alignment="bottom")
top[1].metric("Open disputes", f"{n_open:,}")
by_id = {item.image_id: item for item in items}
chosen = None


def _item_text(image_id: int) -> str:
    item = by_id[image_id]
    return f"{item.name} — {', '.join(map(pretty, item.disputed))} ({item.n_reads} reads)"


if items:
    chosen = top[0].selectbox("Disputed image", list(by_id), key="adjudicate_choice", format_func=_item_text)
with top[2].popover("Open any image", icon=":material/search:", width="stretch"):
    wanted = st.text_input("Image", key="adjudicate_open", placeholder="556, #556, 00000001_000.png")
    if wanted:
        found = find_image_id(wanted)
        if found is None:
            st.error(f"There is no image “{plain(wanted.strip())}” in the database.")
        else:
            chosen = found
if chosen is None:
    st.success("No image is disputed: every image read twice or more has readers who agree.")
    st.stop()

case = data.case_file(chosen)
probabilities = None
pixels, problem = None, None
try:
    pixels = read_xray_file(case.path).pixels if case.path else None
    problem = None if case.path else "The file of this image was not imported."
except (OSError, ImageRejected) as exc:
    problem = f"The file of {plain(case.name)} cannot be read: {plain(exc)}"
predictor, _ = load_active_predictor()
if pixels is not None and predictor is not None:
    cache = state.setdefault("adjudicate_predictions", {})
    if (case.image_id, predictor.name) not in cache:
        cache[(case.image_id, predictor.name)] = predictor.predict_one(pixels).probabilities
    probabilities = cache[(case.image_id, predictor.name)]

left, right = st.columns([1, 1], gap="medium")
with left:
    st.subheader(plain(case.name), anchor=False)
    if pixels is None:
        st.error(problem or "The image cannot be shown.")
    else:
        figure = xray_figure(pixels, case.boxes, height=560, uirevision=case.image_id)
        st.plotly_chart(figure, config=PLOTLY_CONFIG, key="adjudicate_figure", width="stretch")
with right:
    if case.disputed:
        st.warning(f"Readers differ on: {', '.join(map(pretty, case.disputed))}.", icon=":material/warning:")
    elif case.adjudication is not None:
        st.info(f"Adjudicated (version {case.adjudication_version}); a new decision replaces it.")
    model_column = st.column_config.ProgressColumn("Model", min_value=0.0, max_value=1.0, format="%.2f")
    st.dataframe(
        data.side_by_side(case, probabilities), hide_index=True, width="stretch",
        column_config={"Model": model_column},
    )  # fmt: skip
    st.dataframe(data.readers_notes(case), hide_index=True, width="stretch")

st.subheader("Decision", anchor=False)
proposal = data.proposal(case)
with st.form(f"adjudicate_form_{case.image_id}_{case.adjudication_version}", border=True):
    columns = st.columns(2)
    decision = {}
    for index, finding in enumerate(FINDINGS):
        with columns[index // 7]:
            decision[finding] = st.segmented_control(
                pretty(finding) + (" ⚠" if finding in case.disputed else ""), data.DECISIONS,
                default=proposal[finding], key=f"adjudicate_{case.image_id}_{finding}",
            )  # fmt: skip
    exclude_default = bool(case.adjudication.exclude) if case.adjudication else False
    exclude = st.checkbox(
        "Exclude (not diagnostic quality)", value=exclude_default, key=f"adjudicate_x_{case.image_id}"
    )
    reason = st.text_input("Reason for the decision", key=f"adjudicate_reason_{case.image_id}", max_chars=500)
    submitted = st.form_submit_button("Record the decision", type="primary", icon=":material/gavel:")
if submitted:
    try:
        version, name = data.adjudicate(user.id, case, decision, exclude, reason)
    except UserError as exc:
        st.error(plain(exc), icon=":material/error:")
    else:
        flash("success", f"Recorded the decision on {plain(name)} (adjudication version {version}).")
        state.pop("adjudicate_choice", None)
        st.rerun()

with st.expander("History of this image (who, what, when, before → after)", expanded=True):
    st.table(data.history(case.image_id), hide_index=True)
