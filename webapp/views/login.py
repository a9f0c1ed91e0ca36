"""Log in with a local account (clinicians and admins). The Predict page needs no account."""

from __future__ import annotations

import streamlit as st

from webapp.auth import current_user
from webapp.formatting import plain
from webapp.login_form import login_form
from webapp.navigation import landing_page

st.title("Log in")
user = current_user()
if user is not None:
    st.success(f"You are logged in as {plain(user.username)}.")
    st.stop()

if login_form() is not None:
    st.switch_page(landing_page(current_user()))
