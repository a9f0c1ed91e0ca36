"""Study-wide settings of the review, stored in the database and changed by admins.

- blinding (default on): a reader never sees other readers' labels, the consensus or the number of
  reviews of the image they are reading; their form starts from their own earlier review, else from the
  NLP label (AI-first) or empty (AI-hidden). Reviews saved with blinding on are `blinded`, and only
  those count in the agreement statistics.
- study_mode: "ai_first" (the NLP label and the model's output are shown beside the image) or
  "ai_hidden" (neither is). Each review records the mode it was made in.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.errors import DbUserError, NotAllowedError
from db.models import StudySetting, User, utcnow


class StudyError(DbUserError, ValueError):
    """A study setting or assignment that cannot be made as asked (one human sentence)."""


STUDY_MODES: dict[str, str] = {
    "ai_first": "AI-first: the NLP label and the model's output are shown",
    "ai_hidden": "AI-hidden: neither the NLP label nor the model's output is shown",
}


@dataclass(frozen=True)
class StudySettings:
    blinding: bool = True
    study_mode: str = "ai_first"

    @property
    def ai_shown(self) -> bool:
        """Whether readers see the NLP label and the model's output."""
        return self.study_mode == "ai_first"


def study_settings(session: Session) -> StudySettings:
    """The settings now (defaults for any never set): one query."""
    stored = {row.name: row.value.get("value") for row in session.scalars(select(StudySetting))}
    defaults = StudySettings()
    blinding = stored.get("blinding")
    mode = stored.get("study_mode")
    return StudySettings(
        blinding=defaults.blinding if not isinstance(blinding, bool) else blinding,
        study_mode=mode if mode in STUDY_MODES else defaults.study_mode,
    )


def update_study_settings(
    session: Session, admin: User, *, blinding: bool | None = None, study_mode: str | None = None
) -> StudySettings:
    """Change the settings given (admins only); returns the settings after the change."""
    if not (admin.active and admin.is_admin):
        raise NotAllowedError("Only an active admin can change the study settings.")
    if study_mode is not None and study_mode not in STUDY_MODES:
        raise StudyError(f"Unknown study mode {study_mode!r}; choose {' or '.join(STUDY_MODES)}.")
    for name, value in (("blinding", blinding), ("study_mode", study_mode)):
        if value is None:
            continue
        row = session.get(StudySetting, name)
        if row is None:
            session.add(StudySetting(name=name, value={"value": value}, updated_by_id=admin.id))
        else:
            row.value, row.updated_at, row.updated_by_id = {"value": value}, utcnow(), admin.id
    session.flush()
    return study_settings(session)
