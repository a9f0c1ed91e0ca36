"""Log out and return to the public pages."""

import streamlit as st

from webapp.auth import log_out

log_out()
st.rerun()
