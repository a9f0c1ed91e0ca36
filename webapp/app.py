"""CheXNet Studio: the Streamlit entry point. Finds who is logged in, builds their navigation, and runs
the page the URL names, inside one guard that turns a database outage into a sentence."""

from __future__ import annotations

import sys
from pathlib import Path

# `streamlit run webapp/app.py` puts webapp/ on sys.path; the packages live one level up.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import streamlit as st  # noqa: E402

from webapp.auth import current_user, refresh_session, sync_cookie  # noqa: E402
from webapp.database import OUTAGE_ERRORS, outage_guard, unreachable_sentence  # noqa: E402
from webapp.login_form import login_form  # noqa: E402
from webapp.navigation import build_navigation, may_open  # noqa: E402

# An emoji icon: Streamlit draws it locally, where a ":material/...:" page icon is fetched from Google.
st.set_page_config(page_title="CheXNet Studio", page_icon="🫁", layout="wide")

outage: Exception | None = None
try:
    user = refresh_session()  # the database's word on this tab's login, every run
except OUTAGE_ERRORS as exc:
    user, outage = current_user(), exc
sync_cookie()
navigation = build_navigation(user)
page = st.navigation(navigation.sections, position="sidebar")
spec = navigation.spec_of(page)

if outage is not None:
    st.error(unreachable_sentence(outage), icon=":material/cloud_off:")
elif may_open(spec, user):
    with outage_guard():
        page.run()
elif user is None:  # a deep link to a protected page: log in here, then the same URL opens it
    st.title("Log in")
    st.info(f"Log in to open {spec.title if spec else 'this page'}.")
    with outage_guard():
        if login_form() is not None:
            st.rerun()
else:
    st.error("Your account does not have access to this page.")
