"""Log in with a local account (clinicians and admins). The Predict page needs no account."""

from __future__ import annotations

import streamlit as st

from webapp.auth import SessionUser, current_user, log_in
from webapp.database import authenticate_user

st.title("Log in")
if current_user() is not None:
    st.success(f"You are logged in as {current_user().username}.")
    st.stop()

with st.form("login", clear_on_submit=False):
    username = st.text_input("Username", key="login_username", autocomplete="username")
    password = st.text_input(
        "Password", type="password", key="login_password", autocomplete="current-password"
    )
    submitted = st.form_submit_button("Log in", type="primary")

if submitted:
    user, problem = authenticate_user(username.strip(), password)
    if user is None:
        st.error(problem)
    else:
        log_in(SessionUser(id=user["id"], username=user["username"], role=user["role"]))
        st.rerun()
