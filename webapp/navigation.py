"""Which pages exist, who may open them, and what each user's navigation shows.

Every page has a stable URL path (its file name: /review, /models ...), so links and bookmarks work.
The navigation always holds every page a deep link may name: the ones a user may not open are hidden
from the menu, and the entry point (webapp/app.py) answers them with the login form (anonymous) or a
"no access" sentence instead of running them. Every protected page also checks the role itself
(webapp.auth.require_role).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from webapp.auth import SessionUser

VIEWS = Path(__file__).resolve().parent / "views"
READERS = ("clinician", "admin")
ADMINS = ("admin",)


@dataclass(frozen=True)
class PageSpec:
    name: str  # file webapp/views/<name>.py and URL path /<name>
    title: str
    icon: str  # a Material Symbols name: drawn from the font Streamlit bundles, nothing is fetched
    section: str
    roles: tuple[str, ...] = ()  # () = anyone, also anonymous visitors


PAGES = (
    PageSpec("home", "Home", "home", "Demo"),  # "/": forwards to the landing page; never in the menu
    PageSpec("review", "Review labels", "rate_review", "Clinicians", READERS),
    PageSpec("quality", "Label quality", "fact_check", "Clinicians", READERS),
    PageSpec("suspects", "Suggested exclusions", "report", "Clinicians", READERS),  # OOD-flagged images
    PageSpec("predict", "Predict", "radiology", "Demo"),
    PageSpec("admin", "Fine-tune", "model_training", "Admin", ADMINS),
    PageSpec("models", "Models & ROC", "monitoring", "Admin", ADMINS),
    PageSpec("adjudicate", "Adjudicate", "gavel", "Admin", ADMINS),
    PageSpec("history", "Image history", "history", "Admin", ADMINS),
    PageSpec("assignments", "Assignments & study", "assignment", "Admin", ADMINS),
    PageSpec("sessions", "Sessions", "devices", "Admin", ADMINS),
    PageSpec("login", "Log in", "login", "Account"),
    PageSpec("account", "Change password", "password", "Account", READERS),
    PageSpec("logout", "Log out", "logout", "Account", READERS),
)
_BY_PATH = {spec.name: spec for spec in PAGES}
LANDING = {None: "predict", "clinician": "review", "admin": "review"}  # the default page per role


def may_open(spec: PageSpec | None, user: SessionUser | None) -> bool:
    if spec is None or not spec.roles:
        return True
    return user is not None and user.role in spec.roles


def _visible(spec: PageSpec, user: SessionUser | None) -> bool:
    if spec.name == "home":
        return False
    if spec.name == "login":
        return user is None
    return may_open(spec, user)


@dataclass
class Navigation:
    sections: dict[str, list[st.Page]]
    _specs: dict[int, PageSpec]

    def spec_of(self, page: st.Page) -> PageSpec | None:
        """The spec of a page of these sections (what st.navigation returned)."""
        return self._specs.get(id(page))


def build_navigation(user: SessionUser | None) -> Navigation:
    """The navigation for `user` (None: anonymous), sections in PAGES order."""
    sections: dict[str, list[st.Page]] = {}
    specs: dict[int, PageSpec] = {}
    for spec in PAGES:
        if spec.name == "logout" and user is None:
            continue  # nothing to log out of: /logout falls back to the landing page
        if not (VIEWS / f"{spec.name}.py").exists():
            continue
        title = f"Log out ({user.username})" if spec.name == "logout" and user else spec.title
        page = st.Page(
            str(VIEWS / f"{spec.name}.py"),
            title=title,
            icon=f":material/{spec.icon}:",
            url_path=spec.name,
            # The default page's URL is "/" whatever its name, so a hidden forwarder takes that role
            # and /review, /predict ... stay valid for everyone.
            default=spec.name == "home",
            visibility="visible" if _visible(spec, user) else "hidden",
        )
        sections.setdefault(spec.section, []).append(page)
        specs[id(page)] = spec
    return Navigation(sections, specs)


def landing_page(user: SessionUser | None) -> str:
    """The page file (for st.switch_page) a user lands on after logging in or out."""
    return f"views/{LANDING.get(user.role if user else None, 'predict')}.py"
