"""Image history: every saved change of an image's labels (reviews and adjudications), who made it,
when, what it changed and why, from the tamper-evident audit trail (db.audit)."""

from __future__ import annotations

import streamlit as st

from webapp.auth import require_role

user = require_role("admin")

from webapp import adjudication_data as data  # noqa: E402
from webapp.database import engine_or_stop  # noqa: E402
from webapp.formatting import plain  # noqa: E402
from webapp.review_data import find_image_id  # noqa: E402

st.title("Image history")
st.caption(
    "Every review and adjudication saved for an image, oldest first: who, when, what changed "
    "(before → after) and the reason given. The trail is append-only; `python -m db verify-audit` "
    "checks its hash chain."
)
engine_or_stop()

default = st.query_params.get("image", "")
wanted = st.text_input("Image", value=default, key="history_image", placeholder="556, #556, 00000001_000.png")
if not wanted.strip():
    st.info("Type an image's number, NIH name or an upload's file name.")
    st.stop()
image_id = find_image_id(wanted)
if image_id is None:
    st.error(f"There is no image “{plain(wanted.strip())}” in the database.")
    st.stop()
case = data.case_file(image_id)
st.subheader(plain(case.name), anchor=False)
table = data.history(image_id)
if table.empty:
    st.info("Nobody has reviewed or adjudicated this image yet.")
else:
    st.caption(f"{len(table)} event(s).")
    st.table(table, hide_index=True)
