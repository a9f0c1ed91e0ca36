"""What a page's "queue a background job" button does once clicked (Fine-tune's Queue predictions and
PACS jobs, Suggested exclusions' Screen the imported images): queue the job for the signed-in user, then
say so in a flash for the rerun that follows, or show the sentence of the refusal."""

from __future__ import annotations

from typing import Protocol

import streamlit as st
from sqlalchemy.orm import Session

from core.errors import UserError
from db.models import TrainingJob, User
from webapp.database import session
from webapp.formatting import flash, plain


class Enqueue(Protocol):
    """A jobs.queue function such as enqueue_predict or enqueue_screen."""

    def __call__(self, session: Session, *, created_by: User | None = None) -> TrainingJob: ...


def queue_job(enqueue: Enqueue, user_id: int, queued: str) -> None:
    """Queue a job created by `user_id`; on success flash "Job #N queued: <queued>" (markdown: escape
    people's text in it) and rerun, on a refusal (a UserError, e.g. no images yet) show its sentence."""
    try:
        with session() as db:
            job_id = enqueue(db, created_by=db.get(User, user_id)).id
    except UserError as exc:
        st.error(plain(exc))
    else:
        flash("success", f"Job #{job_id} queued: {queued}")
        st.rerun()
