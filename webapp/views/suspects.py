"""Suggested exclusions: imported images a model's out-of-distribution gate flagged (jobs.screen).

Readers see why each image was flagged and decide in its review; nothing is dropped or excluded here.
Admins start a screening of every imported image with the active model's gate.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from webapp.auth import require_role

user = require_role("clinician", "admin")

from db import registry  # noqa: E402
from db.ood_suspects import list_suspects, screened_versions, suspect_counts  # noqa: E402
from jobs import queue  # noqa: E402
from webapp.database import session  # noqa: E402
from webapp.formatting import plain, show_flash, when_text  # noqa: E402
from webapp.queue_button import queue_job  # noqa: E402

PAGE_SIZE = 100
KIND_TEXT = {
    "uniform": "Blank or uniform",
    "noise": "Noise",
    "document": "Document or drawing",
    "colour": "Colour photograph",
    "orientation": "Rotated or inverted",
    "distance": "Unlike the training X-rays",
    "unreadable": "Unreadable file",
}

st.title("Suggested exclusions")
st.caption(
    "Images that a model's out-of-distribution gate flagged when it screened the imported dataset: blank "
    "or uniform frames, noise, documents, colour photographs, rotated or inverted films, images far from "
    "the adult frontal chest X-rays the model was fitted on, and files that cannot be read. These are "
    "suggestions only: every image stays imported and in the review queues; tick “Exclude” in an "
    "image's review to leave it out of training."
)
show_flash()


def screening_section() -> None:
    with session(read_only=True) as db:
        active = registry.get_active_version(db)
        n_files = queue.n_images_with_files(db)
    if active is None:
        st.info("No model version is active, so nothing can be screened.")
        return
    st.caption(
        f"Screening runs {plain(active.name)}'s gate over the {n_files:,} imported images with files on the "
        "training worker; running it again replaces that version's list."
    )
    if st.button("Screen the imported images", icon=":material/play_arrow:", disabled=not n_files):
        require_role("admin")  # the database's word now, not when the page was drawn
        queue_job(
            queue.enqueue_screen, user.id, f"screening with {plain(active.name)}. Follow it on Fine-tune."
        )


if user.role == "admin":
    screening_section()

with session(read_only=True) as db:
    versions = screened_versions(db)
    active = registry.get_active_version(db)
if not versions:
    st.info("No screening has flagged any image yet.")
    st.stop()

names = {version_id: f"{name} ({n:,} flagged)" for version_id, name, n in versions}
default = list(names).index(active.id) if active is not None and active.id in names else 0
version_id = st.selectbox("Model version", list(names), index=default, format_func=names.__getitem__)
with session(read_only=True) as db:
    counts = suspect_counts(db, version_id)
st.dataframe(
    pd.DataFrame({"why": [KIND_TEXT.get(k, k) for k in counts], "images": list(counts.values())}),
    hide_index=True,
)
kinds = ["all", *counts]
kind = st.selectbox("Show", kinds, format_func=lambda k: "All" if k == "all" else KIND_TEXT.get(k, k))
total = sum(counts.values()) if kind == "all" else counts[kind]
pages = max(1, -(-total // PAGE_SIZE))
page = st.number_input("Page", min_value=1, max_value=pages, value=1) if pages > 1 else 1
with session(read_only=True) as db:
    rows = list_suspects(
        db, version_id, check=None if kind == "all" else kind, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE
    )
st.caption(f"{total:,} image(s); page {page} of {pages}. Type the number (#…) on Review labels to open one.")
st.dataframe(
    pd.DataFrame(
        [
            {
                "image": f"#{row.image_id}",
                "file": row.image_name,
                "split": row.split or "—",
                "why": KIND_TEXT.get(row.check, row.check),
                "reason": row.reason,
                "score": round(row.score, 2),
                "flagged": when_text(row.flagged_at),
            }
            for row in rows
        ]
    ),
    hide_index=True,
    width="stretch",
    column_config={
        "score": st.column_config.NumberColumn(help="Distance to the training X-rays; above 1 is far")
    },
)
