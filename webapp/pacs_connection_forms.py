"""The PACS section's connection forms (admins, issue 18): a new connection, and changing or removing the
chosen one. Each saved address and credential is first tried with a QIDO-RS search; a secret is never
shown back (a blank password field keeps the stored one)."""

from __future__ import annotations

import streamlit as st

from core.errors import UserError
from db.models import User
from db.pacs import (
    ConnectionSummary,
    connection_row,
    connection_secret,
    create_connection,
    delete_connection,
    update_connection,
)
from jobs.dicomweb import PacsClient, PacsSettings
from webapp.database import session
from webapp.formatting import flash, plain

AUTH_TEXT = {"none": "None", "basic": "User name and password", "bearer": "Bearer token"}


def new_connection_form(user_id: int) -> None:
    with st.form("pacs_new_connection", clear_on_submit=True):
        st.markdown("**New connection**")
        name = st.text_input("Name", placeholder="Hospital PACS", key="pacs_name")
        example = "https://pacs.example.org/dicom-web"
        url = st.text_input("DICOMweb address", placeholder=example, key="pacs_url")
        auth = st.radio(
            "Authentication", list(AUTH_TEXT), format_func=AUTH_TEXT.get, horizontal=True, key="pacs_auth"
        )
        username = st.text_input("User name (basic)", key="pacs_user")
        secret = st.text_input("Password or token", type="password", key="pacs_secret")
        write_back = st.checkbox(
            "Write results back to this PACS (SR and heat map)", key="pacs_new_write_back"
        )
        if not st.form_submit_button("Save connection", icon=":material/save:"):
            return
    try:
        _checked(url, auth, username, secret)
        with session() as db:
            saved = create_connection(
                db, name, url, auth=auth, username=username, secret=secret, write_back=write_back,
                created_by=db.get(User, user_id),
            )  # fmt: skip
    except UserError as exc:
        st.error(plain(exc), icon=":material/error:")
        return
    flash("success", f"Connection {plain(saved.name)} saved; the PACS answered.")
    st.rerun()


def _checked(url: str, auth: str, username: str, secret: str) -> None:
    """Raise the PACS's one sentence unless it answers a search with these settings."""
    PacsClient(PacsSettings(url.strip(), auth, username.strip(), secret)).check()


def edit_connection_form(chosen: ConnectionSummary) -> None:
    """A moved server or rotated credentials; removing a connection nothing was imported through."""
    if not st.toggle("Change or remove this connection", key=f"pacs_edit_open_{chosen.id}"):
        return
    with st.form(f"pacs_edit_{chosen.id}"):
        url = st.text_input("DICOMweb address", value=chosen.base_url, key=f"pacs_edit_url_{chosen.id}")
        auth = st.radio(
            "Authentication", list(AUTH_TEXT), index=list(AUTH_TEXT).index(chosen.auth),
            format_func=AUTH_TEXT.get, horizontal=True, key=f"pacs_edit_auth_{chosen.id}",
        )  # fmt: skip
        username = st.text_input(
            "User name (basic)", value=chosen.username, key=f"pacs_edit_user_{chosen.id}"
        )
        secret = st.text_input(
            "New password or token", type="password", key=f"pacs_edit_secret_{chosen.id}",
            help="Leave it empty to keep the stored one (it is never shown).",
        )  # fmt: skip
        save, remove = st.columns(2)
        saved = save.form_submit_button("Save changes", icon=":material/save:")
        removed = remove.form_submit_button("Remove connection", icon=":material/delete:")
    try:
        if saved:
            with session(read_only=True) as db:
                row = connection_row(db, chosen.id)
                kept = connection_secret(row) if auth == row.auth and not secret else secret
            _checked(url, auth, username, kept)
            with session() as db:
                update_connection(db, chosen.id, url, auth=auth, username=username, secret=secret or None)
            flash("success", f"Connection {plain(chosen.name)} changed; the PACS answered.")
            st.rerun()
        if removed:
            with session() as db:
                name = delete_connection(db, chosen.id)
            flash("success", f"Connection {plain(name)} removed.")
            st.rerun()
    except UserError as exc:
        st.error(plain(exc), icon=":material/error:")
