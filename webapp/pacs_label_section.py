"""The "Write reader labels back" button of the PACS section (admins, issue 18): queues the worker's
pacs_label_write_back job (jobs.pacs_label_write_back) for a connection with write-back on."""

from __future__ import annotations

import streamlit as st

from jobs.pacs_label_write_back import enqueue_pacs_label_write_back
from webapp.queue_button import queue_job

EXPLAIN = (
    "A structured report per imported image that readers labelled (adjudicated, or their consensus): "
    "each finding present, absent or uncertain. Readers are not named; a label sent before is not sent again."
)


def label_write_back_button(connection_id: int, write_back: bool, user_id: int) -> None:
    """The button, disabled while the connection's write-back is off; a refusal is one sentence."""
    if not st.button(
        "Write reader labels back", icon=":material/fact_check:", disabled=not write_back, help=EXPLAIN,
        key=f"pacs_label_write_back_{connection_id}",
    ):  # fmt: skip
        return
    queue_job(
        lambda db, created_by: enqueue_pacs_label_write_back(db, connection_id, created_by),
        user_id,
        "write reader labels back to the PACS.",
    )
