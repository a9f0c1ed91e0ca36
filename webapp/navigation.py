"""Which pages each role sees. Every protected page also checks the role itself (see webapp.auth)."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from webapp.auth import current_user

VIEWS = Path(__file__).resolve().parent / "views"


def _page(name: str, title: str, icon: str, **kwargs) -> st.Page:
    return st.Page(str(VIEWS / f"{name}.py"), title=title, icon=f":material/{icon}:", url_path=name, **kwargs)


def build_pages() -> dict[str, list[st.Page]]:
    user = current_user()
    if user is None:
        return {
            "Demo": [_page("predict", "Predict", "radiology", default=True)],
            "Account": [_page("login", "Log in", "login")],
        }
    # Logged-in readers land on their work queue; the public demo stays one click away.
    pages = {
        "Clinicians": [
            _page("review", "Review labels", "rate_review", default=True),
            _page("quality", "Label quality", "fact_check"),
        ],
        "Demo": [_page("predict", "Predict", "radiology")],
    }
    if user.role == "admin":
        pages["Admin"] = [
            _page("admin", "Fine-tune", "model_training"),
            _page("models", "Models & ROC", "monitoring"),
        ]
    pages["Account"] = [_page("logout", f"Log out ({user.username})", "logout")]
    return pages
