"""The root URL: sends each visitor to their landing page, so every real page keeps its own URL path."""

import streamlit as st

from webapp.auth import current_user
from webapp.navigation import landing_page

st.switch_page(landing_page(current_user()))
