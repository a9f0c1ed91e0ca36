"""Log out everywhere (every tab of this login) and return to the public pages."""

import streamlit as st

from webapp.auth import log_out
from webapp.navigation import landing_page

log_out()
st.switch_page(landing_page(None))
