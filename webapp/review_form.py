"""The Review page's state between reruns: the open image, the reader's answer, the queue, the save.

Everything lives in st.session_state as plain values; reading and writing the database goes through
webapp.review_data. The functions without a return value are also used as widget callbacks: a
finding's button toggles it (Present, or Uncertain with Shift), and ticking a finding clears No
Finding while No Finding clears every finding, so no combination needs an error round trip.
"""

from __future__ import annotations

from dataclasses import replace

import streamlit as st

from core.errors import UserError
from core.labels import FINDINGS
from db.errors import StaleReviewError
from webapp import review_data
from webapp.formatting import flash, plain, pretty
from webapp.review_data import (
    ABSENT,
    PRESENT,
    UNCERTAIN,
    LabelValues,
    QueueView,
    ReviewTarget,
    status_sentence,
)

QUEUE_SIZE = 50  # images fetched per queue load (plus the ones skipped this session)
# Hotkeys (st.button shortcuts; "C" and "R" are Streamlit's own). Shift + a finding's key: Uncertain.
FINDING_KEYS: dict[str, str] = {
    "Atelectasis": "A", "Cardiomegaly": "G", "Effusion": "E", "Infiltration": "I", "Mass": "M",
    "Nodule": "N", "Pneumonia": "P", "Pneumothorax": "T", "Consolidation": "O", "Edema": "D",
    "Emphysema": "Y", "Fibrosis": "F", "Pleural_Thickening": "L", "Hernia": "H",
}  # fmt: skip
NO_FINDING_KEY, EXCLUDE_KEY, SAVE_KEY, SKIP_KEY, UNDO_KEY = "X", "Q", "Enter", "S", "Z"


def _token() -> int:
    return st.session_state.get("review_form_token", 0)


def answer_key() -> str:
    return f"review_{_token()}_answer"


def comment_key() -> str:
    return f"review_{_token()}_comment"


def reasons_key(finding: str) -> str:
    return f"review_{_token()}_reasons_{finding}"


def write_form(values: LabelValues) -> None:
    """Show an answer in a fresh form (only before the form is drawn in a run, or in callbacks).

    The keys change with every image opened: a click that interrupts a run still sends the browser's
    values of the previous form, and with the same keys those would land on the new image.
    """
    state = st.session_state
    for key in [answer_key(), comment_key(), *map(reasons_key, FINDINGS)]:
        state.pop(key, None)
    state["review_form_token"] = _token() + 1
    state[answer_key()] = {
        "states": dict(values.states), "no_finding": values.no_finding, "exclude": values.exclude,
        "reasons": {finding: list(codes) for finding, codes in values.reasons.items()},
    }  # fmt: skip
    state[comment_key()] = values.comment


def ensure_form(target: ReviewTarget) -> None:
    """Write the form again if its state was dropped (after visiting another page)."""
    if answer_key() not in st.session_state:
        write_form(target.prefill())


def answer() -> dict:
    return st.session_state[answer_key()]


def current_values() -> LabelValues:
    """The answer on screen; reason codes of findings now Present are left out (they explain doubt)."""
    now = answer()
    reasons = {
        finding: list(codes)
        for finding, codes in now["reasons"].items()
        if codes and now["states"][finding] != PRESENT
    }
    return LabelValues(
        dict(now["states"]), bool(now["no_finding"]), bool(now["exclude"]),
        st.session_state.get(comment_key(), "") or "", reasons,
    )  # fmt: skip


def prepare_reasons(finding: str) -> None:
    """Before a finding's reason pills are drawn: their state from the answer (Streamlit drops a widget's
    state in runs that do not draw it, the answer keeps the codes)."""
    key = reasons_key(finding)
    if key not in st.session_state:
        st.session_state[key] = list(answer()["reasons"].get(finding, []))


def store_reasons(finding: str) -> None:
    answer()["reasons"][finding] = list(st.session_state.get(reasons_key(finding)) or [])


# ----------------------------------------------------------------------------------------------------
# Button callbacks of the answer


def _set_state(finding: str, new_state: str) -> None:
    now = answer()
    now["states"][finding] = new_state
    if new_state != ABSENT:
        now["no_finding"] = False  # a finding and No Finding exclude each other: the newer click wins
    st.session_state["review_problem"] = None


def toggle_finding(finding: str) -> None:
    _set_state(finding, ABSENT if answer()["states"][finding] == PRESENT else PRESENT)


def toggle_uncertain(finding: str) -> None:
    _set_state(finding, ABSENT if answer()["states"][finding] == UNCERTAIN else UNCERTAIN)


def toggle_no_finding() -> None:
    now = answer()
    now["no_finding"] = not now["no_finding"]
    if now["no_finding"]:
        now["states"] = dict.fromkeys(FINDINGS, ABSENT)
    st.session_state["review_problem"] = None


def toggle_exclude() -> None:
    answer()["exclude"] = not answer()["exclude"]


# ----------------------------------------------------------------------------------------------------
# Opening images and the queue


def hides_ai() -> bool:
    """The reader's choice for this session: answer before seeing the NLP label and the model."""
    return not st.session_state.get("review_show_ai", True)


def open_image(user_id: int, image_id: int) -> None:
    target = review_data.load_target(image_id, user_id, hide_ai=hides_ai())
    st.session_state.update(review_target=target, review_problem=None, review_stale=False)
    write_form(target.prefill())


def ai_choice_changed(user_id: int) -> None:
    """Showing the AI takes effect at once (the image is opened again, AI-first, keeping the reader's
    answer so far); hiding it, from the next image: the reader has seen it on this one, and the review
    records what they saw."""
    target = st.session_state.get("review_target")
    if target is None or hides_ai() or target.ai_shown or not target.ai_allowed:
        return
    values = current_values()
    reopened = review_data.load_target(target.image_id, user_id)
    st.session_state["review_target"] = replace(reopened, opened_at=target.opened_at)  # the read goes on
    write_form(values)


def next_image(user_id: int) -> None:
    """Open the first image of the queue the reviewer has not skipped (or none: the queue is done)."""
    state = st.session_state
    skipped = set(state["review_skipped"])
    item = next((item for item in state["review_queue"].items if item.image_id not in skipped), None)
    state["review_target"] = None
    state["review_reason"] = None
    if item is not None:
        open_image(user_id, item.image_id)
        target = state["review_target"]
        if item.score is not None and item.top_finding and target.ai_shown and not target.blinded:
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
        skipped = tuple(state["review_skipped"])
        state["review_queue"] = review_data.load_queue(
            user_id, strategy, finding=finding, split=split, seed=seed, limit=QUEUE_SIZE + len(skipped),
            skip=skipped if strategy == review_data.ASSIGNMENTS else (),
        )  # fmt: skip
        state["review_queue_key"] = key
        next_image(user_id)
    return state["review_queue"]


def upcoming_image() -> int | None:
    """The queue's next image after the one on screen (what to read ahead), if any."""
    state = st.session_state
    queue, target = state.get("review_queue"), state.get("review_target")
    skipped = set(state.get("review_skipped", []))
    if queue is None or target is None:
        return None
    upcoming = (
        i.image_id for i in queue.items if i.image_id not in skipped and i.image_id != target.image_id
    )
    return next(upcoming, None)


def open_by_name(user_id: int) -> None:
    name = st.session_state.get("review_open_name", "")
    image_id = review_data.find_image_id(name)
    if image_id is None:
        st.session_state["review_open_problem"] = (
            f"There is no image “{plain(name.strip())}” in the database (try its number, e.g. 556 or #556, "
            "its NIH name or the uploaded file's name)."
        )
        return
    st.session_state["review_open_problem"] = None
    st.session_state["review_open_popover"] = False  # closed: the image it opened is what to see
    open_image(user_id, image_id)
    st.session_state["review_reason"] = "Opened by name or number."


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


def undo_last_save(user_id: int) -> bool:
    """Reopen the image of the reader's last save with the answer they saved, to change it (reviews
    are versioned, never deleted); False when they have saved nothing yet."""
    image_id = st.session_state.get("review_last_saved") or review_data.last_saved_image(user_id)
    if image_id is None:
        st.session_state["review_problem"] = "You have not saved a review yet, so there is nothing to undo."
        return False
    open_image(user_id, image_id)
    st.session_state["review_reason"] = "Reopened your last save: change the answer and save again."
    return True


def submit(user_id: int, target: ReviewTarget) -> bool:
    """Save the form's answer; True when saved (the page reruns), else the problem is kept in the state.

    A stale save (the review changed since the image was opened) keeps the reviewer's input and offers
    to load the saved version instead.
    """
    state = st.session_state
    state["review_stale"] = False
    try:
        version, label = review_data.save(user_id, target, current_values())
    except UserError as exc:  # its sentence may name the image: an upload's file name
        state["review_problem"] = plain(exc)
        state["review_stale"] = isinstance(exc, StaleReviewError)
        return False
    after = "" if target.blinded else f" {status_sentence(label)}."
    flash("success", f"Saved your review of {plain(target.name)} (version {version}).{after}")
    state["review_last_saved"] = target.image_id
    state["review_queue"] = None  # reloaded on the rerun: the saved image leaves the queue
    return True
