"""The Predict page's second source (issue 18): a logged-in reader picks an image of a study in a connected
PACS by accession number or Study Instance UID, instead of uploading a file.

The study's single-frame frontal radiographs are listed by series and instance number, view position and
modality only (jobs.pacs_lookup); the picked one is fetched and de-identified like an import before
anything reads it, and the page then predicts on those bytes as on an upload. A look stores nothing: no
database row, no file, no review button; this tab's state keeps the de-identified bytes of the one image
on screen (and, to fetch it, the study's UIDs, never shown), dropped when the upload is chosen again.
"""

from __future__ import annotations

import streamlit as st

from core.errors import UserError
from db.pacs import ConnectionSummary, list_connections
from jobs.dicomweb import PacsClient
from jobs.pacs_import import client_for
from jobs.pacs_lookup import FoundStudy, find_study, look_at
from webapp.auth import SessionUser
from webapp.database import session
from webapp.formatting import plain
from webapp.navigation import READERS
from webapp.upload_slots import upload_slot

SOURCE_UPLOAD = "Upload a file"
SOURCE_PACS = "From the PACS"
_FOUND = "pacs_predict_found"  # (connection id, look-up number, FoundStudy)
_LOOK = "pacs_predict_look"  # ((connection id, look-up number, image index), de-identified bytes)
_LOOKUPS = "pacs_predict_lookups"  # look-ups so far: each one's image choice starts afresh


def _forget() -> None:
    for key in (_FOUND, _LOOK):
        st.session_state.pop(key, None)


def _client(connection_id: int) -> PacsClient:
    with session(read_only=True) as db:
        return client_for(db, connection_id)


def _stop_with(problem: UserError) -> None:
    st.error(plain(problem), icon=":material/error:")
    st.stop()


def _find_form(connection: ConnectionSummary) -> None:
    """Accession number or Study UID, "Find study": a new look-up replaces the last one."""
    with st.form("pacs_predict_find"):
        text = st.text_input(
            "Accession number or Study Instance UID",
            key="pacs_predict_key",
            max_chars=64,
            help="Matched exactly (no wildcards). Only the study's frontal radiographs are listed.",
        )
        asked = st.form_submit_button("Find study", icon=":material/search:")
    if not asked:
        return
    _forget()
    try:
        with st.spinner("Asking the PACS…"):
            found = find_study(_client(connection.id), text)
    except UserError as exc:
        _stop_with(exc)
    number = st.session_state[_LOOKUPS] = st.session_state.get(_LOOKUPS, 0) + 1
    st.session_state[_FOUND] = (connection.id, number, found)


def _looked_at(connection_id: int, number: int, found: FoundStudy, index: int) -> bytes:
    """The picked image's de-identified bytes: fetched once per pick, kept while it is on screen."""
    key = (connection_id, number, index)
    kept = st.session_state.get(_LOOK)
    if kept is not None and kept[0] == key:
        return kept[1]
    st.session_state.pop(_LOOK, None)  # the last image's bytes go before the next is fetched
    try:
        with upload_slot(), st.spinner("Fetching the image from the PACS…"):
            data = look_at(_client(connection_id), found.images[index])
    except UserError as exc:
        _stop_with(exc)
    st.session_state[_LOOK] = (key, data)
    return data


def pacs_source(user: SessionUser | None) -> bytes | None:
    """The de-identified DICOM file of the image picked from a PACS; None when the page's source is the
    upload (the PACS is not offered to this user, or the upload is chosen). Until an image is picked, or
    when the PACS refuses, the page stops here (having said why)."""
    if user is None or user.role not in READERS:
        return None
    with session(read_only=True) as db:
        connections = list_connections(db)
    if not connections:
        return None
    if st.radio("Source", (SOURCE_UPLOAD, SOURCE_PACS), horizontal=True, key="predict_source") != SOURCE_PACS:
        _forget()
        return None
    connection = connections[0]
    if len(connections) > 1:
        connection = st.selectbox(
            "PACS connection", connections, format_func=lambda c: c.name, key="pacs_predict_connection"
        )
    _find_form(connection)
    kept = st.session_state.get(_FOUND)
    if kept is None or kept[0] != connection.id:  # nothing found yet, or on another connection
        _forget()
        st.stop()
    _, number, found = kept
    n = len(found.images)
    st.caption(
        f"Found {n} image{'s' if n != 1 else ''} to predict on. {plain(found.left_out)} The image is "
        "fetched and de-identified for this look only; nothing of it is stored."
    )
    index = st.selectbox(
        "Image",
        range(n),
        format_func=lambda i: found.images[i].label,
        key=f"pacs_predict_image_{number}",
    )
    return _looked_at(connection.id, number, found, index)
