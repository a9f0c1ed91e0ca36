"""What the Adjudicate, Image history and Assignments pages read and write, as plain values.

Each function opens its own short transaction (webapp.database.session). User-supplied strings
(usernames, comments, reasons, file names) are returned as they are: the pages show them in
dataframes or through webapp.formatting.plain, never as markdown.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
from sqlalchemy import select

from core.labels import FINDINGS
from db import adjudication, assignments, reviews, study
from db.adjudication import DisputedItem, ReaderAnswer
from db.assignments import AssignmentBatch
from db.errors import InvalidLabelError, NotFoundError
from db.models import User
from db.study import StudySettings
from webapp.database import session
from webapp.formatting import plain, pretty, when_text
from webapp.review_data import ABSENT, PRESENT, UNCERTAIN, LabelValues, values_of

STATE_TEXT = {PRESENT: "✓ present", ABSENT: "– absent", UNCERTAIN: "? uncertain"}
DECISIONS = ("Present", "Absent", "Uncertain")  # the adjudicator's choices per finding


@dataclass(frozen=True)
class CaseFile:
    """Everything the adjudicator weighs for one image."""

    image_id: int
    name: str
    path: str | None
    boxes: tuple[tuple[str, float, float, float, float], ...]
    nlp: dict[str, bool] | None
    answers: list[ReaderAnswer]
    disputed: tuple[str, ...]
    adjudication: LabelValues | None
    adjudication_version: int | None


def disputes(limit: int = 200) -> tuple[list[DisputedItem], int]:
    with session(read_only=True) as db_session:
        return adjudication.disputed_queue(db_session, limit=limit), adjudication.disputed_count(db_session)


def case_file(image_id: int) -> CaseFile:
    with session(read_only=True) as db_session:
        image = reviews.get_image(db_session, image_id)
        if image is None:
            raise NotFoundError(f"There is no image with id {image_id}.")
        label = adjudication.labelled(db_session, image_id)
        decided = reviews.get_adjudication(db_session, image_id)
        return CaseFile(
            image_id=image.id,
            name=image.label,
            path=image.path,
            boxes=tuple(reviews.image_boxes(db_session, image_id)),
            nlp=adjudication.nlp_findings(db_session, image_id),
            answers=adjudication.reader_answers(db_session, image_id),
            disputed=label.disputed,
            adjudication=None if decided is None else values_of(decided),
            adjudication_version=None if decided is None else decided.version,
        )


def side_by_side(case: CaseFile, probabilities: dict[str, float] | None) -> pd.DataFrame:
    """Per finding: disputed?, NLP, model, then each reader's answer (columns named by reader)."""
    table: dict[str, list[Any]] = {
        "Finding": [pretty(f) for f in FINDINGS],
        "Disputed": ["⚠ yes" if f in case.disputed else "" for f in FINDINGS],
        "NLP": [("✓" if case.nlp[f] else "–") if case.nlp else "" for f in FINDINGS],
        "Model": [probabilities.get(f) if probabilities else None for f in FINDINGS],
    }
    for number, answer in enumerate(case.answers, start=1):
        column = f"Reader {number}: {answer.username}"
        table[column] = [
            STATE_TEXT[answer.states[f]]
            + (f" ({', '.join(answer.reasons[f])})" if answer.reasons.get(f) else "")
            for f in FINDINGS
        ]
    return pd.DataFrame(table)


def readers_notes(case: CaseFile) -> pd.DataFrame:
    """Per reader: exclude, comment, how the read was made."""
    return pd.DataFrame(
        {
            "Reader": [a.username for a in case.answers],
            "Exclude": ["yes" if a.exclude else "no" for a in case.answers],
            "Comment": [a.comment for a in case.answers],
            "Blinded": ["yes" if a.blinded else "no" for a in case.answers],
            "Study mode": [a.study_mode or "—" for a in case.answers],
            "Seconds": [None if a.read_seconds is None else round(a.read_seconds, 1) for a in case.answers],
            "Saved": [when_text(a.updated_at) for a in case.answers],
        }
    )


def proposal(case: CaseFile) -> dict[str, str | None]:
    """The decision's starting point per finding: the adjudication so far, else what the readers agree
    on; None (to be chosen) where they differ."""
    if case.adjudication is not None:
        return {f: case.adjudication.states[f].capitalize() for f in FINDINGS}
    kept = [a for a in case.answers if not a.exclude] or case.answers
    choice: dict[str, str | None] = {}
    for finding in FINDINGS:
        states = {a.states[finding] for a in kept}
        choice[finding] = states.pop().capitalize() if len(states) == 1 else None
    return choice


def adjudicate(
    admin_id: int, case: CaseFile, decision: dict[str, str | None], exclude: bool, reason: str
) -> tuple[int, str]:
    """Record the decision; returns (the adjudication's version, the image's name). A sentence
    (UserError) when a disputed finding is undecided or no reason is given."""
    undecided = [pretty(f) for f, value in decision.items() if value is None]
    if undecided:
        raise InvalidLabelError(f"Decide Present, Absent or Uncertain for {', '.join(undecided)}.")
    if not reason.strip():
        raise InvalidLabelError("Give the reason for the decision; it is kept in the image's history.")
    findings = {f: value == "Present" for f, value in decision.items()}
    uncertain = [f for f, value in decision.items() if value == "Uncertain"]
    no_finding = not any(findings.values()) and not uncertain
    with session() as db_session:
        admin = reviews.account_by_id(db_session, admin_id)
        row = reviews.adjudicate(
            db_session, case.image_id, admin, findings, no_finding, exclude, reason.strip(),
            case.adjudication_version, reason=reason.strip(), uncertain=uncertain,
        )  # fmt: skip
        return row.version, case.name


def history(image_id: int) -> pd.DataFrame:
    """The image's label events, oldest first. Its cells are markdown-escaped (webapp.formatting.plain):
    the pages show it with st.table, whose cells are markdown, and a reason is free text."""
    with session(read_only=True) as db_session:
        entries = adjudication.image_history(db_session, image_id)
    return pd.DataFrame(
        {
            "When": [when_text(e.at) for e in entries],
            "Who": [plain(e.username) for e in entries],
            "What": [e.kind for e in entries],
            "Version": [e.version for e in entries],
            "Before → after": [plain(e.change) for e in entries],
            "Reason": [plain(e.reason) for e in entries],
        }
    )


# ----------------------------------------------------------------------------------------------------
# Assignments and the study settings


def settings() -> StudySettings:
    with session(read_only=True) as db_session:
        return study.study_settings(db_session)


def save_settings(admin_id: int, blinding: bool, study_mode: str) -> StudySettings:
    with session() as db_session:
        admin = reviews.account_by_id(db_session, admin_id)
        return study.update_study_settings(db_session, admin, blinding=blinding, study_mode=study_mode)


def readers() -> dict[int, str]:
    """Active accounts that can read (clinicians and admins): id -> username."""
    with session(read_only=True) as db_session:
        rows = db_session.execute(select(User.id, User.username).where(User.active).order_by(User.username))
        return {int(user_id): name for user_id, name in rows}


def assign(
    admin_id: int, reader_ids: list[int], n_images: int, percent: float, split: str | None, seed: int
) -> AssignmentBatch:
    with session() as db_session:
        admin = reviews.account_by_id(db_session, admin_id)
        return assignments.create_assignments(
            db_session, admin, reader_ids, n_images, percent, split=split, seed=seed
        )


def workload() -> pd.DataFrame:
    with session(read_only=True) as db_session:
        rows = assignments.workload(db_session)
    return pd.DataFrame(
        {
            "Reader": [r.username for r in rows],
            "Assigned": [r.assigned for r in rows],
            "Done": [r.done for r in rows],
            "Second reads": [r.second_reads for r in rows],
            "Progress": [r.done / r.assigned if r.assigned else 0.0 for r in rows],
        }
    )
