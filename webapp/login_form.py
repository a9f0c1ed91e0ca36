"""The login form, shown by the Log in page and in place of a protected page opened before logging in."""

from __future__ import annotations

import streamlit as st

from webapp.auth import SessionUser, log_in
from webapp.database import attempt_login


def login_form() -> SessionUser | None:
    """The form; the user once a submitted login succeeded (the caller then reruns), else None."""
    with st.form("login", clear_on_submit=False):
        username = st.text_input("Username", key="login_username", autocomplete="username")
        password = st.text_input(
            "Password", type="password", key="login_password", autocomplete="current-password"
        )
        submitted = st.form_submit_button("Log in", type="primary")
    if not submitted:
        return None
    result = attempt_login(username.strip(), password)
    if result.account is None:
        st.error(result.problem)
        return None
    return log_in(result)
