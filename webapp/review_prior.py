"""The prior study beside the current image: the patient's previous follow-up (db.prior_study), its
place in the patient's series and its label as this reader may see it (load_prior), drawn
on the current image's window and invert so that the two compare grey level for grey level.

Looked up only while the reader has the prior view on, once per image (kept in the session state).
Each function opens its own short transaction, as in webapp.review_data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import streamlit as st

from core.imaging.reader import ImageRejected, read_xray_file
from db import adjudication, prior_study, reviews
from webapp.database import session
from webapp.formatting import plain
from webapp.review_data import ReviewTarget, label_text, status_sentence, values_of
from webapp.viewer import PLOTLY_CONFIG, apply_window, xray_figure

CACHED_PRIORS = 3


@dataclass(frozen=True)
class PriorView:
    """The patient's previous image as the reader may see it beside the current one."""

    image_id: int
    name: str
    path: str | None
    follow_up: int
    current_follow_up: int
    n_images: int
    label: str  # its label as this reader may see it (plain text, no markdown)


def load_prior(target: ReviewTarget, user_id: int) -> PriorView | None:
    """The prior study of `target` (same patient, next lower follow-up number), or None.

    Its label: an adjudication (the final label) always; else, unblinded, the readers' consensus; else
    the NLP label where the AI is shown; and the reader's own review of it. Blinded, never other readers'
    consensus (the reader may be asked to read that image too); AI hidden, no NLP label either.
    """
    with session(read_only=True) as db_session:
        prior = prior_study.prior_study(db_session, target.image_id)
        if prior is None:
            return None
        label = adjudication.labelled(db_session, prior.image_id)
        parts = []
        if label.source == "adjudication" or (label.source == "consensus" and not target.blinded):
            parts.append(status_sentence(label))
        elif target.ai_shown:
            nlp = adjudication.nlp_findings(db_session, prior.image_id)
            parts.append(f"NLP label: {label_text(nlp)}" if nlp is not None else "No NLP label")
        own = reviews.get_review(db_session, prior.image_id, reviews.account_by_id(db_session, user_id))
        if own is not None:
            parts.append(f"your review: {label_text(values_of(own).findings)}")
        return PriorView(
            prior.image_id, prior.image_index, prior.path, prior.follow_up, prior.current_follow_up,
            prior.n_images, "; ".join(parts) or "its labels are hidden in this blinded, AI-hidden read",
        )  # fmt: skip


def _cache(name: str) -> dict:
    return st.session_state.setdefault(name, {})


def _remember(cache: dict, key: object, value: object) -> None:
    cache.pop(key, None)
    cache[key] = value
    while len(cache) > CACHED_PRIORS:
        cache.pop(next(iter(cache)))


def prior_of(target: ReviewTarget, user_id: int) -> PriorView | None:
    cache = _cache("review_priors")
    key = (target.image_id, target.blinded, target.ai_shown)
    if key not in cache:
        _remember(cache, key, load_prior(target, user_id))
    return cache[key]


def caption(prior: PriorView | None, target: ReviewTarget) -> str:
    """One line above the pair (markdown-safe: names and labels are escaped)."""
    if prior is None:
        return "No earlier image of this patient is in the database: nothing to compare with."
    order = f"follow-up {prior.follow_up} (earlier) of {prior.n_images} image(s) of this patient"
    return f"Prior: {plain(prior.name)} · {order} · {plain(prior.label)}."


def current_caption(prior: PriorView, target: ReviewTarget) -> str:
    return f"This image: {plain(target.name)} · follow-up {prior.current_follow_up} · your answer is for it."


def _pixels(prior: PriorView) -> tuple[np.ndarray | None, str | None]:
    cache = _cache("review_prior_pixels")
    if (prior.image_id, prior.path) in cache:
        return cache[(prior.image_id, prior.path)], None
    if not prior.path:
        return None, f"The file of the prior {plain(prior.name)} was not imported."
    try:
        pixels = read_xray_file(prior.path).pixels
    except (OSError, ImageRejected) as exc:
        return None, f"The file of the prior {plain(prior.name)} cannot be read: {plain(exc)}"
    _remember(cache, (prior.image_id, prior.path), pixels)
    return pixels, None


def read_ahead(prior: PriorView) -> None:
    """Read the prior's file now (errors are left for when it is drawn)."""
    _pixels(prior)


def draw(prior: PriorView, window: tuple[int, int], invert: bool, uirevision: object) -> None:
    pixels, problem = _pixels(prior)
    if pixels is None:
        st.error(problem)
        return
    shown = apply_window(pixels, window[0], window[1], invert)
    figure = xray_figure(shown, (), None, uirevision=f"prior-{prior.image_id}-{uirevision}")
    st.plotly_chart(figure, config=PLOTLY_CONFIG, key="review_prior_figure", height="stretch")
