"""Who is logged in, and the role check every protected page runs first."""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st
from streamlit.errors import StreamlitPageNotFoundError

SESSION_KEY = "user"


@dataclass(frozen=True)
class SessionUser:
    id: int
    username: str
    role: str  # "clinician" | "admin"


def current_user() -> SessionUser | None:
    return st.session_state.get(SESSION_KEY)


def log_in(user: SessionUser) -> None:
    st.session_state[SESSION_KEY] = user


def log_out() -> None:
    st.session_state.pop(SESSION_KEY, None)


def require_role(*roles: str) -> SessionUser:
    """Stop the page unless the user has one of `roles`: a URL typed by hand gets nothing."""
    user = current_user()
    if user is None:
        st.warning("Please log in to see this page.")
        try:
            st.page_link("views/login.py", label="Log in", icon=":material/login:")
        except StreamlitPageNotFoundError:  # the page runs outside the app's navigation (a test of one page)
            pass
        st.stop()
    if user.role not in roles:
        st.error("Your account does not have access to this page.")
        st.stop()
    return user
