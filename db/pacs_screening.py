"""Screening PACS connections for new studies (issue 18; the pacs_screen job is jobs.pacs_screen); the
tables are in db.pacs_models.

- Per connection (`pacs_screening`): `set_screening` (every how many seconds the worker polls it; 0:
  off), `screening_state`, `advance_window` (the first study date the next poll asks for), and the
  last screening job (`record_screen_job`, `active_screen_job`, `last_screen`).
- Polling: `due_connections` (one query: on, due, and no screening job of theirs queued or running) and
  `take_turn` (a compare-and-set before queueing, so two workers, or a worker and the page, queue one).
- Studies (`pacs_screened_studies`): `screened_studies` (those a version already screened),
  `study_instances` (the imported instances of some studies) and `record_screened`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from db.errors import DbUserError
from db.models import Image, TrainingJob, utcnow
from db.pacs import WriteBackItem, connection_row
from db.pacs_models import PacsInstance, PacsScreenedStudy, PacsScreening

MIN_EVERY_S = 60  # a poll is a job row: more often would flood the job list
MAX_EVERY_S = 7 * 24 * 3600
ACTIVE = ("queued", "running")


class ScreeningSettingError(DbUserError):
    """A screening interval out of bounds (one sentence)."""


@dataclass(frozen=True)
class ScreeningState:
    connection_id: int
    every_s: int = 0  # 0: the worker does not poll it on its own
    screen_from: str = ""  # YYYYMMDD; "" before the first poll
    next_at: dt.datetime | None = None
    job_id: int | None = None


@dataclass(frozen=True)
class LastScreen:
    """The last screening job of a connection, as the admin page shows it."""

    job_id: int
    status: str
    finished_at: dt.datetime | None
    summary: str  # the job's closing sentence, or its error


def _row(session: Session, connection_id: int) -> PacsScreening:
    row = session.get(PacsScreening, connection_id)
    if row is None:
        connection_row(session, connection_id)  # the connection's own sentence when it is gone
        row = PacsScreening(connection_id=connection_id, every_s=0, screen_from="")
        session.add(row)
        session.flush()
    return row


def screening_state(session: Session, connection_id: int) -> ScreeningState:
    row = session.get(PacsScreening, connection_id)
    if row is None:
        return ScreeningState(connection_id)
    return ScreeningState(connection_id, row.every_s, row.screen_from, row.next_at, row.job_id)


def set_screening(session: Session, connection_id: int, every_s: int) -> None:
    """Poll the connection every `every_s` seconds (0: stop). Turning it on or changing the interval
    makes it due at once."""
    if every_s and not MIN_EVERY_S <= every_s <= MAX_EVERY_S:
        raise ScreeningSettingError(
            f"Screen a PACS every {MIN_EVERY_S // 60} minute to {MAX_EVERY_S // 86400} days, or turn it off."
        )
    row = _row(session, connection_id)
    if row.every_s != every_s:
        row.every_s, row.next_at = every_s, None


def advance_window(session: Session, connection_id: int, screen_from: str) -> None:
    """The next poll asks for studies from `screen_from` (YYYYMMDD) on; the window never moves back."""
    row = _row(session, connection_id)
    row.screen_from = max(row.screen_from or "", screen_from)


def record_screen_job(session: Session, connection_id: int, job_id: int) -> None:
    _row(session, connection_id).job_id = job_id


def active_screen_job(session: Session, connection_id: int) -> int | None:
    """The id of the connection's screening job while it is queued or running."""
    query = (
        select(TrainingJob.id)
        .join(PacsScreening, PacsScreening.job_id == TrainingJob.id)
        .where(PacsScreening.connection_id == connection_id, TrainingJob.status.in_(ACTIVE))
    )
    return session.scalar(query)


def last_screen(session: Session, connection_id: int) -> LastScreen | None:
    query = (
        select(TrainingJob)
        .join(PacsScreening, PacsScreening.job_id == TrainingJob.id)
        .where(PacsScreening.connection_id == connection_id)
    )
    job = session.scalar(query)
    if job is None:
        return None
    summary = job.error or str((job.progress or {}).get("message") or "")
    return LastScreen(job.id, job.status, job.finished_at, summary)


def due_connections(session: Session, now: dt.datetime | None = None) -> list[tuple[int, int, int | None]]:
    """(connection id, every_s, its last screening job) of the connections whose poll is due and whose
    last screening job is no longer queued or running: one query, run by the worker between jobs."""
    now = now or utcnow()
    query = (
        select(PacsScreening.connection_id, PacsScreening.every_s, PacsScreening.job_id)
        .outerjoin(TrainingJob, TrainingJob.id == PacsScreening.job_id)
        .where(
            PacsScreening.every_s > 0,
            or_(PacsScreening.next_at.is_(None), PacsScreening.next_at <= now),
            or_(TrainingJob.id.is_(None), TrainingJob.status.not_in(ACTIVE)),
        )
        .order_by(PacsScreening.connection_id)
    )
    return [(connection_id, every_s, job_id) for connection_id, every_s, job_id in session.execute(query)]


def take_turn(
    session: Session,
    connection_id: int,
    *,
    seen_job_id: int | None,
    every_s: int | None = None,
    now: dt.datetime | None = None,
) -> bool:
    """A compare-and-set before queueing a screening job: True when the connection's last screening job is
    still `seen_job_id` (one the caller found finished) and, for a scheduled poll (`every_s`), the poll
    is still due, whose due time then moves `every_s` on. The row stays locked until the caller's commit
    (record the new job with `record_screen_job`), so of two workers, or a worker and the page, polling
    at once, one queues the job."""
    _row(session, connection_id)  # the page may queue the first poll of a connection
    same_job = PacsScreening.job_id.is_(None) if seen_job_id is None else PacsScreening.job_id == seen_job_id
    conditions = [PacsScreening.connection_id == connection_id, same_job]
    if every_s is None:
        values = {"job_id": PacsScreening.job_id}  # written unchanged: it takes the row lock
    else:
        now = now or utcnow()
        conditions.append(or_(PacsScreening.next_at.is_(None), PacsScreening.next_at <= now))
        values = {"next_at": now + dt.timedelta(seconds=every_s)}
    taken = session.execute(
        update(PacsScreening).where(*conditions).values(**values).execution_options(synchronize_session=False)
    )
    return taken.rowcount == 1


def screened_studies(
    session: Session, connection_id: int, model_version_id: int, study_pseudonyms: Collection[str]
) -> set[str]:
    """Those of `study_pseudonyms` that the version already screened on this connection."""
    found: set[str] = set()
    wanted = sorted(study_pseudonyms)
    for start in range(0, len(wanted), 500):
        query = select(PacsScreenedStudy.study_pseudonym).where(
            PacsScreenedStudy.connection_id == connection_id,
            PacsScreenedStudy.model_version_id == model_version_id,
            PacsScreenedStudy.study_pseudonym.in_(wanted[start : start + 500]),
        )
        found.update(session.scalars(query))
    return found


def study_instances(
    session: Session, connection_id: int, study_pseudonyms: Collection[str]
) -> dict[str, list[WriteBackItem]]:
    """The imported instances (with a file and a write-back link) of each of the studies, in import order."""
    found: dict[str, list[WriteBackItem]] = {}
    wanted = sorted(study_pseudonyms)
    for start in range(0, len(wanted), 500):
        query = (
            select(
                PacsInstance.study_pseudonym,
                PacsInstance.id,
                Image.id,
                Image.path,
                PacsInstance.sop_pseudonym,
                PacsInstance.source_link,
            )  # fmt: skip
            .join(Image, Image.id == PacsInstance.image_id)
            .where(
                PacsInstance.connection_id == connection_id,
                PacsInstance.status == "imported",
                PacsInstance.study_pseudonym.in_(wanted[start : start + 500]),
            )
            .order_by(PacsInstance.id)
        )
        for study, *item in session.execute(query):
            if item[2] and item[4]:
                found.setdefault(study, []).append(WriteBackItem(*item))
    return found


def record_screened(
    session: Session,
    connection_id: int,
    study_pseudonym: str,
    model_version_id: int,
    *,
    images: int,
    written_back: int,
    job_id: int | None = None,
) -> None:
    session.add(
        PacsScreenedStudy(
            connection_id=connection_id,
            study_pseudonym=study_pseudonym,
            model_version_id=model_version_id,
            images=images,
            written_back=written_back,
            job_id=job_id,
        )
    )
    session.flush()
