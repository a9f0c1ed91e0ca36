"""Change your own password (the current one is needed). Your other logins end; this one stays."""

from __future__ import annotations

import streamlit as st

from db import accounts
from db.errors import DbUserError
from webapp.auth import current_token, require_role
from webapp.database import engine
from webapp.formatting import flash, plain, show_flash

user = require_role("clinician", "admin")

st.title("Change password")
st.caption(
    f"Account: {plain(user.username)} ({user.role}). A password has at least {accounts.MIN_PASSWORD_LENGTH} "
    "characters and is not one of the most common ones; a few words make a good one."
)
show_flash()

with st.form("change_password", clear_on_submit=True):
    current = st.text_input("Current password", type="password", autocomplete="current-password")
    new = st.text_input("New password", type="password", autocomplete="new-password")
    again = st.text_input("New password again", type="password", autocomplete="new-password")
    submitted = st.form_submit_button("Change password", type="primary")

if submitted:
    if new != again:
        st.error("The two new passwords differ.")
    else:
        try:
            accounts.change_password(engine(), user.id, current, new, keep_token=current_token())
        except DbUserError as exc:
            st.error(str(exc))
        else:
            flash("success", "Password changed. Your other logins have ended; this one stays.")
            st.rerun()
