"""The Fine-tune page's "Import from a PACS" section (admins, issue 18): DICOMweb connections (the secret is
never shown back), a search with its preview count, the import job and its resumption, and writing
results back (off by default per connection). The work runs in the worker (jobs.pacs_import,
jobs.pacs_write_back)."""

from __future__ import annotations

import datetime as dt

import streamlit as st

from core.errors import UserError
from db.pacs import list_connections, set_write_back
from db.pacs_screening import MAX_EVERY_S, last_screen, screening_state, set_screening
from jobs.pacs_import import (
    PacsImportParams,
    client_for,
    enqueue_pacs_import,
    last_stopped_import,
    preview,
    resume_pacs_import,
)
from jobs.pacs_screen import enqueue_pacs_screen
from jobs.pacs_write_back import enqueue_pacs_write_back
from webapp.database import session
from webapp.formatting import plain
from webapp.pacs_connection_forms import AUTH_TEXT, edit_connection_form, new_connection_form
from webapp.pacs_label_section import label_write_back_button
from webapp.queue_button import queue_job


def _date(value: dt.date | None) -> str:
    return value.strftime("%Y%m%d") if value else ""


def _search_form(connection_id: int, user_id: int) -> None:
    with st.form(f"pacs_search_{connection_id}"):
        first, last, modalities = st.columns(3)
        date_from = first.date_input("Studies from", value=None)
        date_to = last.date_input("to", value=None)
        chosen = modalities.multiselect("Modalities", ["CR", "DX"], default=["CR", "DX"])
        description = st.text_input("Study description (wildcards * and ?)", placeholder="*CHEST*")
        look, start = st.columns(2)
        asked_preview = look.form_submit_button("Preview count", icon=":material/search:")
        asked_import = start.form_submit_button(
            "Import from the PACS", icon=":material/cloud_download:", type="primary"
        )
    if not (asked_preview or asked_import):
        return
    try:
        params = PacsImportParams(connection_id, _date(date_from), _date(date_to), tuple(chosen), description)
        if asked_preview:
            with session(read_only=True) as db:
                client = client_for(db, connection_id)
            n_studies, n_instances = preview(client, params.criteria())
            st.info(
                f"{n_studies:,} studies with {n_instances:,} instances match; the import keeps the "
                "single-frame frontal (PA/AP) radiographs and lists the rest with why."
            )
            return
    except UserError as exc:
        st.error(plain(exc), icon=":material/error:")
        return
    queue_job(
        lambda db, created_by: enqueue_pacs_import(db, params, created_by), user_id, "import from the PACS."
    )


def _jobs_buttons(connection_id: int, write_back: bool, user_id: int) -> None:
    with session(read_only=True) as db:
        stopped = last_stopped_import(db)
        stopped_id = stopped.id if stopped is not None else None
    left, right = st.columns(2)
    resume = f"Resume import #{stopped_id}"
    if stopped_id is not None and left.button(resume, icon=":material/play_circle:"):
        queue_job(
            lambda db, created_by: resume_pacs_import(db, stopped_id, created_by),
            user_id,
            f"continuing import #{stopped_id}.",
        )
    explain = "A structured report and a heat map per imported image, with the active model."
    icon = ":material/cloud_upload:"
    if right.button("Write results back", icon=icon, disabled=not write_back, help=explain):
        queue_job(
            lambda db, created_by: enqueue_pacs_write_back(db, connection_id, created_by),
            user_id,
            "write results back to the PACS.",
        )


def _screening(connection_id: int, user_id: int) -> None:
    """Screening new studies (jobs.pacs_screen): the worker polls the connection every N minutes (off by
    default), or once now; each study is screened once per model version."""
    with session(read_only=True) as db:
        state = screening_state(db, connection_id)
        last = last_screen(db, connection_id)
    on, every, now = st.columns(3)
    explain = (
        "The worker asks the PACS for new studies, predicts them with the active model and, when writing "
        "back is on, sends the results; each study once per model version."
    )
    wanted = on.toggle(
        "Screen new studies", value=state.every_s > 0, key=f"pacs_screen_{connection_id}", help=explain
    )
    minutes = every.number_input(
        "Every (minutes)", min_value=1, max_value=MAX_EVERY_S // 60, value=state.every_s // 60 or 15,
        step=1, key=f"pacs_screen_every_{connection_id}", disabled=not wanted,
    )  # fmt: skip
    every_s = int(minutes) * 60 if wanted else 0
    try:
        if every_s != state.every_s:
            with session() as db:
                set_screening(db, connection_id, every_s)
            st.rerun()
    except UserError as exc:
        st.error(plain(exc), icon=":material/error:")
    if now.button("Screen now", icon=":material/radar:", key=f"pacs_screen_now_{connection_id}"):
        queue_job(
            lambda db, created_by: enqueue_pacs_screen(db, connection_id, created_by),
            user_id,
            "screen the PACS for new studies.",
        )
    if last is not None:
        when = f", {last.finished_at:%Y-%m-%d %H:%M} UTC" if last.finished_at else ""
        st.caption(plain(f"Last screening: job #{last.job_id}, {last.status}{when}. {last.summary}".strip()))


def pacs_section(user_id: int) -> None:
    # Keyed and tracked: a click inside reruns the page with a flash above (elements shift), and an
    # untracked expander would then close, hiding the answer (a preview's count, an error) it just drew.
    with st.expander(
        "Import from a PACS (DICOMweb)",
        icon=":material/cloud_download:",
        key="pacs_section",
        on_change="rerun",
    ):
        st.caption(
            "Imported instances are de-identified (DICOM basic profile; age, sex and view kept) and join the "
            "review queues like the dataset's images. Nothing identifying is stored."
        )
        with session(read_only=True) as db:
            connections = list_connections(db)
        if connections:
            st.dataframe(
                [
                    {
                        "name": c.name,
                        "address": c.base_url,
                        "authentication": AUTH_TEXT[c.auth],
                        "user": c.username,
                        "secret": "set" if c.has_secret else "—",
                        "write back": c.write_back,
                    }
                    for c in connections
                ],  # fmt: skip
                hide_index=True,
                width="stretch",
            )
        new_connection_form(user_id)
        if not connections:
            return
        chosen = st.selectbox("Connection", connections, format_func=lambda c: c.name, key="pacs_connection")
        edit_connection_form(chosen)
        wanted = st.toggle("Write results back", value=chosen.write_back, key=f"pacs_write_back_{chosen.id}")
        if wanted != chosen.write_back:
            with session() as db:
                set_write_back(db, chosen.id, wanted)
            st.rerun()
        _search_form(chosen.id, user_id)
        _jobs_buttons(chosen.id, chosen.write_back, user_id)
        label_write_back_button(chosen.id, chosen.write_back, user_id)
        _screening(chosen.id, user_id)
