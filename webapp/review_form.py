"""The Review page's state between reruns: the open image, the form's widget keys, the queue, the save.

Everything lives in st.session_state as plain values; reading and writing the database goes through
webapp.review_data. The functions without a return value are also used as widget callbacks.
"""

from __future__ import annotations

import streamlit as st

from core.errors import UserError
from core.labels import FINDINGS, NO_FINDING
from db.errors import StaleReviewError
from webapp import review_data
from webapp.formatting import flash, plain, pretty
from webapp.review_data import LabelValues, QueueView, ReviewTarget, label_text, status_sentence

QUEUE_SIZE = 50  # images fetched per queue load (plus the ones skipped this session)
FORM_FIELDS = ("no_finding", "exclude", "comment")


def form_keys() -> dict[str, str]:
    """Widget keys of the form: the 14 findings, "no_finding", "exclude", "comment".

    The keys change with every image opened. A click that interrupts a run still sends the browser's
    values of the previous form, and with the same keys those would overwrite the new image's label.
    """
    token = st.session_state.get("review_form_token", 0)
    keys = {finding: f"review_{token}_f_{finding}" for finding in FINDINGS}
    keys.update({name: f"review_{token}_{name}" for name in FORM_FIELDS})
    return keys


def write_form(values: LabelValues) -> None:
    """Show a label in a fresh form (only before the form is drawn in a run, or in callbacks)."""
    state = st.session_state
    for key in form_keys().values():
        state.pop(key, None)
    state["review_form_token"] = state.get("review_form_token", 0) + 1
    keys = form_keys()
    for finding in FINDINGS:
        state[keys[finding]] = bool(values.findings.get(finding, False))
    state[keys["no_finding"]] = values.no_finding
    state[keys["exclude"]] = values.exclude
    state[keys["comment"]] = values.comment


def ensure_form(target: ReviewTarget) -> dict[str, str]:
    """The form's keys, its values written again if their state was dropped (after visiting another page)."""
    if form_keys()[FINDINGS[0]] not in st.session_state:
        write_form(target.prefill())
    return form_keys()


def open_image(user_id: int, image_id: int) -> None:
    target = review_data.load_target(image_id, user_id)
    st.session_state.update(review_target=target, review_problem=None, review_stale=False)
    write_form(target.prefill())


def next_image(user_id: int) -> None:
    """Open the first image of the queue the reviewer has not skipped (or none: the queue is done)."""
    state = st.session_state
    skipped = set(state["review_skipped"])
    item = next((item for item in state["review_queue"].items if item.image_id not in skipped), None)
    state["review_target"] = None
    state["review_reason"] = None
    if item is not None:
        open_image(user_id, item.image_id)
        if item.score is not None and item.top_finding:
            state["review_reason"] = (
                f"In this queue because the model disagrees most on {pretty(item.top_finding)} "
                f"(|probability − label| = {item.score:.2f})."
            )


def current_queue(
    user_id: int, strategy: str, finding: str | None, split: str | None, seed: int
) -> QueueView:
    """The queue the controls ask for, loaded again (and its first image opened) when they changed or a
    save or skip dropped it."""
    state = st.session_state
    key = (strategy, finding, split)
    if state.get("review_queue") is None or state.get("review_queue_key") != key:
        limit = QUEUE_SIZE + len(state["review_skipped"])
        state["review_queue"] = review_data.load_queue(
            user_id, strategy, finding=finding, split=split, seed=seed, limit=limit
        )
        state["review_queue_key"] = key
        next_image(user_id)
    return state["review_queue"]


def open_by_name(user_id: int) -> None:
    name = st.session_state.get("review_open_name", "")
    image_id = review_data.find_image_id(name)
    if image_id is None:
        st.session_state["review_open_problem"] = (
            f"There is no image named “{plain(name.strip())}” in the database."
        )
        return
    st.session_state["review_open_problem"] = None
    open_image(user_id, image_id)
    st.session_state["review_reason"] = "Opened by name."


def reload_saved_version(user_id: int) -> None:
    target = st.session_state.get("review_target")
    if target is not None:
        open_image(user_id, target.image_id)


def skip(image_id: int) -> None:
    """Leave the image for now; the queue reloads without it on the next run."""
    st.session_state["review_skipped"] = [*st.session_state["review_skipped"], image_id]
    st.session_state["review_queue"] = None


def show_skipped_again() -> None:
    st.session_state["review_skipped"] = []
    st.session_state["review_queue"] = None


def submit(user_id: int, target: ReviewTarget, values: LabelValues) -> bool:
    """Save the form's label; True when saved (the page reruns), else the problem is kept in the state.

    A stale save (the review changed since the image was opened) keeps the reviewer's input and offers
    to load the saved version instead.
    """
    state = st.session_state
    state["review_stale"] = False
    if values.no_finding and any(values.findings.values()):
        state["review_problem"] = (
            f"“{NO_FINDING}” cannot be saved together with findings "
            f"({label_text(values.findings)}); untick one or the other."
        )
        return False
    try:
        version, effective = review_data.save(user_id, target, values)
    except UserError as exc:  # its sentence may name the image: an upload's file name
        state["review_problem"] = plain(exc)
        state["review_stale"] = isinstance(exc, StaleReviewError)
        return False
    flash(
        "success",
        f"Saved your review of {plain(target.name)} (version {version}). {status_sentence(effective)}.",
    )
    state["review_queue"] = None  # reloaded on the rerun: the saved image leaves the queue
    return True
