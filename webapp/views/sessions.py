"""Admins: who is logged in where, and ending a login (it ends at that browser's next click)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from db import sessions
from webapp.auth import current_token, require_role
from webapp.database import session
from webapp.formatting import flash, show_flash, when_text

user = require_role("admin")

st.title("Sessions")
st.caption(
    f"Live logins: not logged out, used within the last {int(sessions.IDLE_TIMEOUT.total_seconds() // 60)} "
    f"minutes, and younger than {int(sessions.SESSION_LIFETIME.total_seconds() // 3600)} hours. Ending one "
    "logs that browser out at its next page run; deactivating an account ends all of its logins."
)
show_flash()

with session(read_only=True) as db:
    live = sessions.list_live_sessions(db)
    own = sessions.resolve_session(db, current_token()) if current_token() else None

if not live:
    st.info("Nobody is logged in.")
    st.stop()

own_id = own.session_id if own else None
frame = pd.DataFrame(
    [
        {
            "session": row.id,
            "user": row.username + (" (you, here)" if row.id == own_id else ""),
            "logged in": when_text(row.created_at),
            "last seen": when_text(row.last_seen_at),
            "from": row.client_ip or "unknown",
            "browser": row.user_agent,
        }
        for row in live
    ]
)
st.dataframe(frame, hide_index=True, width="stretch")

choices = {row.id: f"#{row.id} {row.username} ({row.client_ip or 'unknown'})" for row in live}
with st.form("revoke_session"):
    chosen = st.selectbox("Session to end", list(choices), format_func=choices.__getitem__)
    submitted = st.form_submit_button("End this session", type="primary")
if submitted:
    require_role("admin")  # the database's word now, not when the page was drawn
    with session() as db:
        ended = sessions.revoke_session_id(db, chosen)
    flash(
        "success" if ended else "info", f"Session #{chosen} " + ("ended." if ended else "had already ended.")
    )
    st.rerun()
