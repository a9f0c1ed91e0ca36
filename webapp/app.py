"""CheXNet Studio: the Streamlit entry point. Builds the pages the current user may see."""

from __future__ import annotations

import sys
from pathlib import Path

# `streamlit run webapp/app.py` puts webapp/ on sys.path; the packages live one level up.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import streamlit as st  # noqa: E402

from webapp.navigation import build_pages  # noqa: E402

st.set_page_config(page_title="CheXNet Studio", page_icon=":material/pulmonology:", layout="wide")
st.navigation(build_pages(), position="sidebar").run()
