"""Assignments & study: the study settings (blinding, AI-first / AI-hidden) and which images each
reader reads, with a share of double reads that always go to a second, different reader."""

from __future__ import annotations

import streamlit as st

from webapp.auth import require_role

user = require_role("admin")

from core.errors import UserError  # noqa: E402
from db.study import STUDY_MODES  # noqa: E402
from webapp import adjudication_data as data  # noqa: E402
from webapp import review_data  # noqa: E402
from webapp.database import engine_or_stop  # noqa: E402
from webapp.formatting import flash, plain, show_flash  # noqa: E402

st.title("Assignments & study")
engine_or_stop()
show_flash()

st.subheader("Study settings", anchor=False)
current = data.settings()
with st.form("study_settings", border=True):
    blinding = st.toggle(
        "Blinded reading", value=current.blinding,
        help="Readers never see other readers' labels, the consensus or how many reviews an image has; only "
        "blinded reads count in the agreement statistics.",
    )  # fmt: skip
    mode = st.radio(
        "Study mode", list(STUDY_MODES), index=list(STUDY_MODES).index(current.study_mode),
        format_func=STUDY_MODES.get, help="Recorded with each review.",
    )  # fmt: skip
    if st.form_submit_button("Save the study settings", icon=":material/save:"):
        try:
            saved = data.save_settings(user.id, blinding, mode)
        except UserError as exc:
            st.error(plain(exc))
        else:
            flash("success", f"Study settings saved: blinding {'on' if saved.blinding else 'off'}, "
                  f"{STUDY_MODES[saved.study_mode]}.")  # fmt: skip
            st.rerun()

st.subheader("Assign images", anchor=False)
st.caption(
    "Images nobody has read or been given yet, in a shuffled order. First reads go to the readers in turn; "
    "the chosen share of images gets a second read by another reader than the first."
)
readers = data.readers()
with st.form("assign_images", border=True):
    chosen = st.multiselect("Readers", list(readers), format_func=readers.get, key="assign_readers")
    cols = st.columns(4)
    n_images = cols[0].number_input("Images", min_value=1, max_value=50_000, value=100, step=10)
    percent = cols[1].slider(
        "Double-read share (%)", 0, 100, 20, help="e.g. 20 %: one image in five is read twice."
    )
    split_options = ["all", *(review_data.splits() or [])]
    split = cols[2].selectbox("Split", split_options)
    seed = cols[3].number_input("Shuffle seed", min_value=0, value=0, step=1)
    if st.form_submit_button("Assign", type="primary", icon=":material/assignment_add:"):
        try:
            only_split = None if split == "all" else split
            batch = data.assign(user.id, chosen, int(n_images), float(percent), only_split, int(seed))
        except UserError as exc:
            st.error(plain(exc))
        else:
            per_reader = ", ".join(f"{plain(name)} {n}" for name, n in batch.reads_per_reader.items())
            flash(
                "success",
                f"Assigned {batch.n_images:,} images, {batch.n_double:,} of them twice ({per_reader}).",
            )
            st.rerun()

st.subheader("Progress", anchor=False)
table = data.workload()
if table.empty:
    st.info("No images are assigned yet.")
else:
    st.dataframe(
        table, hide_index=True, width="stretch",
        column_config={"Progress": st.column_config.ProgressColumn("Progress", min_value=0.0, max_value=1.0)},
    )  # fmt: skip
