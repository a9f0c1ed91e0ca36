"""Which pages each role sees. Every protected page also checks the role itself (see webapp.auth)."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from webapp.auth import current_user

VIEWS = Path(__file__).resolve().parent / "views"


def _page(name: str, title: str, icon: str, **kwargs) -> st.Page:
    return st.Page(str(VIEWS / f"{name}.py"), title=title, icon=icon, url_path=name, **kwargs)


def build_pages() -> dict[str, list[st.Page]]:
    user = current_user()
    pages: dict[str, list[st.Page]] = {"Demo": [_page("predict", "Predict", ":material/radiology:", default=True)]}
    if user is None:
        pages["Account"] = [_page("login", "Log in", ":material/login:")]
        return pages
    if user.role in ("clinician", "admin") and (VIEWS / "review.py").exists():
        pages["Clinicians"] = [_page("review", "Review labels", ":material/rate_review:")]
        if (VIEWS / "quality.py").exists():
            pages["Clinicians"].append(_page("quality", "Label quality", ":material/fact_check:"))
    if user.role == "admin":
        admin = [p for p in (("admin", "Fine-tune", ":material/model_training:"), ("models", "Models & ROC", ":material/monitoring:")) if (VIEWS / f"{p[0]}.py").exists()]
        if admin:
            pages["Admin"] = [_page(*p) for p in admin]
    pages["Account"] = [_page("logout", f"Log out ({user.username})", ":material/logout:")]
    return pages
