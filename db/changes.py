"""Cheap change tokens: pages cache expensive aggregates keyed by them instead of recomputing per rerun.

A token is a tuple of a few indexed maxima and counts, read in ONE statement of about a millisecond
at any dataset size (maxima of primary keys and of small tables only). It changes whenever what it
covers changes:

- `labels_token`: every label save writes an append-only label event (so max(label_events.id)
  moves on each review or adjudication save), imports add images and NLP/Google labels (their max
  ids move), uploads add images. Covers db.quality.label_quality, db.label_status.label_status
  (together with `models_token`, for "changed since the active version"), exports.
- `models_token`: versions registered (max id), promoted or rolled back (the active id, the latest
  promotion), jobs queued or finished (max id, the latest finish: an evaluation stores its metrics
  before its job finishes), predictions stored (max id: save_predictions inserts new rows). Covers
  the Models & ROC page's versions and metrics.

Use from a page (Streamlit caches by the arguments' values):

    @st.cache_data(show_spinner=False, max_entries=4)
    def _quality(url: str, token: tuple) -> LabelQuality:
        with session(read_only=True) as db_session:
            return label_quality(db_session)

    with session(read_only=True) as db_session:
        token = changes.labels_token(db_session)
    quality = _quality(default_url(), token)

Writes that bypass both (editing rows by hand in SQL) are not seen; restart the app after those.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import Image, LabelEvent, ModelVersion, NlpLabel, Prediction, TrainingJob

Token = tuple[Any, ...]


def _max(column: Any) -> Any:
    return select(func.max(column)).scalar_subquery()


def _label_parts() -> list[Any]:
    return [_max(LabelEvent.id), _max(Image.id), _max(NlpLabel.id)]


def _model_parts() -> list[Any]:
    active = select(ModelVersion.id).where(ModelVersion.is_active).scalar_subquery()
    return [
        _max(ModelVersion.id),
        active,
        _max(ModelVersion.promoted_at),
        _max(TrainingJob.id),
        _max(TrainingJob.finished_at),
        _max(Prediction.id),
    ]


def _token(session: Session, parts: list[Any]) -> Token:
    return tuple(session.execute(select(*parts)).one())


def labels_token(session: Session) -> Token:
    """Changes whenever a label, an image or an imported label changes (one statement)."""
    return _token(session, _label_parts())


def models_token(session: Session) -> Token:
    """Changes whenever model versions, the active version, jobs or stored predictions change."""
    return _token(session, _model_parts())


def change_token(session: Session) -> Token:
    """Both of the above in one statement (labels first, then models)."""
    return _token(session, [*_label_parts(), *_model_parts()])
