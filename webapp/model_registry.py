"""What the Models & ROC page does to the registry (promote after a confirmation, roll back one step of
the promotion history, queue an evaluation, add a reference comparator) and how it describes one version.
Each action ends in a flash message for the rerun that follows its button.

Promote and Roll back record the admin who clicked and the optional reason typed in their confirm step
(webapp.model_sections; db.registry's registry events); a version's details say who promoted it, when
and why.

Version names, paths, notes, usernames and reasons are shown escaped: they come from people and model
folders.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import streamlit as st

from core.errors import UserError
from db.models import User
from db.references import add_reference, add_reference_file
from db.registry import RegistryEventView, latest_events, promote_version, rollback_version
from db.reviews import account_by_id
from jobs.queue import enqueue_evaluate
from webapp.admin_data import VersionInfo
from webapp.auth import current_user
from webapp.database import session
from webapp.formatting import code, flash, plain, when_text

TRAINING_SETTINGS = [
    ("epochs", "epochs"),
    ("batch_size", "batch"),
    ("lr", "lr"),
    ("class_weighting", "class weighting"),
    ("image_size", "image size"),
    ("device", "device"),
]


def _switch(action: Callable[[Any, User | None, str], Any], done: str, reason: str) -> None:
    """Run a registry action (session, acting user, reason) that returns the version now active, and say
    which one it is."""
    acting = current_user()
    try:
        with session() as db_session:
            by = account_by_id(db_session, acting.id) if acting is not None else None
            name = action(db_session, by, reason if reason.strip() else "").name
    except UserError as exc:
        flash("error", plain(exc))
    else:
        flash("success", f"{plain(name)} {done}. The Predict page uses it from its next run.")


PENDING_PROMOTION = "promote_candidate"  # session key: the version waiting for "Confirm promotion"


def ask_to_promote(version_id: int) -> None:
    """Promote asks first: the page then shows the comparison with the active version and a confirm step."""
    st.session_state[PENDING_PROMOTION] = version_id


def pending_promotion(versions: list[VersionInfo]) -> VersionInfo | None:
    wanted = st.session_state.get(PENDING_PROMOTION)
    return next((v for v in versions if v.id == wanted and not v.is_active), None)


def cancel_promotion() -> None:
    st.session_state.pop(PENDING_PROMOTION, None)


def promote(version_id: int, reason: str = "") -> None:
    """The confirmed promotion, with the reason typed in its confirm step."""
    cancel_promotion()
    _switch(
        lambda db_session, by, why: promote_version(db_session, version_id, by=by, reason=why),
        "is now the active model",
        reason,
    )


def roll_back(reason: str = "") -> None:
    """The confirmed roll back, with the reason typed in its confirm step."""
    cancel_promotion()
    _switch(
        lambda db_session, by, why: rollback_version(db_session, by=by, reason=why),
        "is active again (rolled back)",
        reason,
    )


def rollback_target(versions: list[VersionInfo]) -> VersionInfo | None:
    """The version a roll back re-activates: the one promoted before the active one (as
    db.registry.rollback_target: the promotion history is the versions with a promotion time)."""
    earlier = [v for v in versions if not v.is_active and v.promoted_at is not None]
    return max(earlier, key=lambda v: (v.promoted_at, v.id), default=None)


def add_uploaded_reference(user_name: str, name: str, filename: str, data: bytes) -> None:
    try:
        entry = add_reference(data, name, source_file=filename, added_by=user_name)
    except UserError as exc:
        flash("error", plain(exc))
    else:
        flash("success", f"Reference {plain(entry.name)} added ({entry.n_images:,} images).")


def add_server_reference(user_name: str, name: str, path: Any) -> None:
    try:
        entry = add_reference_file(path, name, added_by=user_name)
    except UserError as exc:
        flash("error", plain(exc))
    else:
        flash("success", f"Reference {plain(entry.name)} added ({entry.n_images:,} images).")


def queue_evaluation(user_id: int, version: VersionInfo) -> None:
    try:
        with session() as db_session:
            creator = account_by_id(db_session, user_id)
            job = enqueue_evaluate(db_session, version_id=version.id, created_by=creator)
            job_id = job.id
    except UserError as exc:
        flash("error", plain(exc))
    else:
        flash(
            "success",
            f"Job #{job_id} queued: evaluate {plain(version.name)}. Follow it on the Fine-tune page.",
        )


def can_roll_back(versions: list[VersionInfo]) -> bool:
    """Whether an earlier active version exists to go back to."""
    return rollback_target(versions) is not None


def registry_columns() -> dict:
    column = st.column_config
    return {
        "version": column.TextColumn("version", help="● marks the version the app uses."),
        "test AUROC": column.TextColumn(
            "test AUROC", help="Mean over the 14 findings, official test split, NLP labels."
        ),
        "val AUROC": column.TextColumn(
            "val AUROC", help="Mean over the 14 findings on the version's own validation split."
        ),
        "test AUROC, reviewed labels": column.TextColumn(
            "test AUROC, reviewed labels",
            help="Same test images, labels corrected by the reviewers where reviewed.",
        ),
    }


def promotion_text(version: VersionInfo) -> str:
    """When the version was promoted, by whom and why, and a later roll back to it (markdown-safe)."""
    if not version.promoted_at:
        return "— (not in the promotion history)"
    with session(read_only=True) as db_session:
        events = latest_events(db_session, version.id)

    def who_and_why(event: RegistryEventView) -> str:
        who = f"by {plain(event.by)}" if event.by else "from the command line"
        return f"{who}: {plain(' '.join(event.reason.split()))}" if event.reason.strip() else who

    text = when_text(version.promoted_at)
    promoted = events.get("promote")
    if promoted is None:
        text += " (who and why not recorded: promoted before promotions were recorded)"
    else:
        text += f" {who_and_why(promoted)}"
    back = events.get("rollback")
    if back is not None and back.at >= version.promoted_at:
        text += f"; active again by a roll back at {when_text(back.at)} {who_and_why(back)}"
    return text


def details_markdown(version: VersionInfo) -> str:
    """The version's folder, lineage, dates, labels and training settings as a markdown list."""
    snapshot = version.label_snapshot
    rows = {
        "Folder": code(version.path),
        "Parent": plain(version.parent or "—"),
        "Created": when_text(version.created_at),
        "Promoted": promotion_text(version),
        "Labels": plain(version.label_source),
    }
    if snapshot.get("sha256"):
        rows["Label table"] = (
            f"{snapshot.get('n_images', 0):,} images, {snapshot.get('n_excluded', 0):,} "
            f"excluded · sha256 {code(str(snapshot['sha256'])[:16] + '…')}"
        )
    settings = version.hyperparams
    if settings:
        rows["Training"] = plain(
            " · ".join(
                f"{label} {settings[k]}" for k, label in TRAINING_SETTINGS if settings.get(k) is not None
            )
        )
    errors = version.metrics.get("evaluation_errors")
    if errors:
        rows["Evaluation notes"] = plain(" ".join(errors))
    return "\n".join(f"- **{name}:** {value}" for name, value in rows.items())
