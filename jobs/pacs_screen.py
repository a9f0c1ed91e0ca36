"""Screening a PACS for new studies (issue 18): the worker's pacs_screen job kind; one run is one poll.

A poll asks the PACS (QIDO-RS, standard attributes only, so any DICOMweb PACS answers) for the CR/DX
studies whose StudyDate is on or after the connection's window start, leaves out the studies this model
version screened before (db.pacs_screening: one row per connection, study pseudonym and version), and
when any are left imports the window (jobs.pacs_import: what was imported before is not fetched again),
then for each new study, oldest first: predicts every imported instance with the active (or given)
version, writes back the SR and CAM Secondary Capture when the connection's write-back is on
(jobs.pacs_write_back), and stores the predictions (the app's `predictions`, like the predict job) with
the study's screened row in one transaction. A quiet poll is one QIDO question.

The window: QIDO matches dates, not times, so the window start is a date: the newest StudyDate/StudyTime
screened, less OVERLAP, and it never moves back. Studies of the same day are asked for again by every
poll of that day (and of the previous one until OVERLAP into the new day), which the screened rows make
harmless: clocks that disagree and studies that arrive in the same second are not lost, as they would be
with a strict "after the last one". A StudyDate/Time more than a day ahead of the worker's clock (a
modality with a wrong clock) does not move the window. The first poll starts the day before.

Limits: a study is screened once per version with the instances it had then; an instance that reaches the
PACS after its study was screened is imported by a later poll but not screened. A study that arrives
with a StudyDate before the window start (sent days late) is not found; import it by date.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from core.errors import Cancelled
from core.imaging.deidentify import pseudonymous_uid
from db import pacs, registry
from db import pacs_screening as screening
from db.engine import session_scope
from db.jobs import enqueue_job
from db.models import TrainingJob, User
from jobs.dicomweb import PacsClient, SearchCriteria
from jobs.pacs_import import Report, ShouldStop, client_for, import_instances
from jobs.pacs_write_back import model_identity, predict_image, send_results
from jobs.params import JobParamsError
from jobs.run import JobRun

JOB_PACS_SCREEN = "pacs_screen"
OVERLAP = dt.timedelta(hours=2)
FUTURE_SLACK = dt.timedelta(days=1)  # time zones between the PACS and the worker, and a little more


@dataclass(frozen=True)
class PacsScreenParams:
    connection_id: int
    version_id: int | None = None  # None: the active version when the poll runs

    def __post_init__(self) -> None:
        if isinstance(self.connection_id, bool) or not isinstance(self.connection_id, int):
            raise JobParamsError("A screening job needs the id of its PACS connection.")
        version = self.version_id
        if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
            raise JobParamsError(f"The version id must be a whole number, not {self.version_id!r}.")

    def to_dict(self) -> dict[str, Any]:
        return {"connection_id": self.connection_id, "version_id": self.version_id}

    @classmethod
    def from_dict(cls, values: Any) -> PacsScreenParams:
        if not isinstance(values, dict):
            raise JobParamsError("The parameters of a PACS screening must be a mapping.")
        unknown = sorted(set(values) - {"connection_id", "version_id"})
        if unknown:
            raise JobParamsError(f"Unknown PACS screening parameter(s): {', '.join(unknown)}.")
        return cls(**values)


@dataclass
class ScreenSummary:
    since: str  # YYYYMMDD: the first study date the poll asked for
    studies: int = 0  # the studies the search found
    seen_before: int = 0  # screened by this version before
    screened: int = 0
    images: int = 0  # predicted
    written_back: int = 0
    unreadable: int = 0
    imported: int = 0  # instances this poll imported
    left_out: int = 0

    def sentence(self, version: str, write_back: bool) -> str:
        since = f"{self.since[:4]}-{self.since[4:6]}-{self.since[6:]}"
        results = f"{self.written_back:,} written back" if write_back else "write-back is off"
        unreadable = f", {self.unreadable:,} unreadable" if self.unreadable else ""
        return (
            f"Screened {_count(self.screened, 'new study', 'new studies')} from {since} on with {version}: "
            f"{_count(self.images, 'image')} predicted{unreadable}, {results} "
            f"({_count(self.imported, 'instance')} imported, {self.left_out:,} left out; "
            f"{_count(self.seen_before, 'study', 'studies')} screened before)."
        )


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n:,} {one if n == 1 else many or one + 's'}"


@dataclass(frozen=True)
class _NewStudy:
    pseudonym: str
    uid: str
    attributes: dict[str, Any]  # the PACS's patient and study attributes: in memory only
    when: dt.datetime | None  # its StudyDate/StudyTime (the PACS's local time)


def study_datetime(date: Any, time: Any) -> dt.datetime | None:
    """A study's StudyDate (YYYYMMDD) and StudyTime (HHMMSS.frac, HHMM or HH; missing: midnight)."""
    date, digits = str(date or "").strip(), str(time or "").strip().split(".")[0]
    try:
        day = dt.datetime.strptime(date[:8], "%Y%m%d")
        hours, minutes, seconds = int(digits[0:2] or 0), int(digits[2:4] or 0), int(digits[4:6] or 0)
        return day.replace(hour=hours, minute=minutes, second=seconds)
    except ValueError:
        return None


def window_start(when: dt.datetime | None, since: str, now: dt.datetime | None = None) -> str:
    """Where the window starts once a study of `when` is screened: never earlier than `since`, and not
    moved by a date beyond the worker's clock (now, local time) and FUTURE_SLACK."""
    now = now or dt.datetime.now()
    if when is None or when > now + FUTURE_SLACK:
        return since
    return max(since, (when - OVERLAP).strftime("%Y%m%d"))


def first_window(now: dt.datetime | None = None) -> str:
    return ((now or dt.datetime.now()) - dt.timedelta(days=1)).strftime("%Y%m%d")


def screen_connection(
    engine: Engine,
    connection_id: int,
    load_predictor: Callable[[], Any],
    version_id: int,
    version_name: str,
    *,
    job_id: int | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    should_stop: ShouldStop | None = None,
    client: PacsClient | None = None,
) -> tuple[ScreenSummary, bool]:
    """One poll of the connection (see the module docstring): (what it did, whether write-back was on).
    `load_predictor` is called once, and only when there is a new study. Cancelled between two studies;
    the studies screened until then stay screened."""
    from core.imaging.xray_image import ImageRejected

    key = pacs.pseudonym_key()
    with session_scope(engine, read_only=True) as session:
        write_back = pacs.connection_row(session, connection_id).write_back
        client = client or client_for(session, connection_id)
        since = screening.screening_state(session, connection_id).screen_from or first_window()
    criteria = SearchCriteria(date_from=since)
    study_uids = {pseudonymous_uid(key, uid): uid for uid in client.search_studies(criteria)}
    with session_scope(engine, read_only=True) as session:
        done = screening.screened_studies(session, connection_id, version_id, study_uids)
    summary = ScreenSummary(since, studies=len(study_uids), seen_before=len(done))
    fresh = {pseudonym: uid for pseudonym, uid in study_uids.items() if pseudonym not in done}
    if not fresh:
        return summary, write_back
    new = _new_studies(client, fresh, progress, should_stop)
    imported = _import(engine, connection_id, criteria, client, job_id, progress, should_stop)
    summary.imported, summary.left_out = imported
    predictor = load_predictor()
    model = model_identity(predictor, version_name, version_id)
    with session_scope(engine, read_only=True) as session:
        instances = screening.study_instances(session, connection_id, fresh)
    for index, study in enumerate(new):
        if should_stop is not None and should_stop():
            raise Cancelled(
                f"Cancelled after screening {index:,} of {len(new):,} new studies; the next poll goes on."
            )
        probabilities: dict[int, dict[str, float]] = {}
        sent: list[int] = []
        for item in instances.get(study.pseudonym, []):
            try:
                predicted = predict_image(predictor, item.path)
            except (OSError, ImageRejected):  # the file is gone, or no longer reads
                summary.unreadable += 1
                continue
            probabilities[item.image_id] = dict(predicted.prediction.probabilities)
            if write_back:
                send_results(client, key, item, predictor, model, predicted, study=study.attributes)
                sent.append(item.instance_id)
        with session_scope(engine) as session:
            if probabilities:
                registry.save_predictions(session, version_id, probabilities)
            for instance_id in sent:
                pacs.mark_written(session, instance_id)
            screening.record_screened(
                session, connection_id, study.pseudonym, version_id, images=len(probabilities),
                written_back=len(sent), job_id=job_id,
            )  # fmt: skip
            screening.advance_window(session, connection_id, window_start(study.when, since))
        summary.screened += 1
        summary.images += len(probabilities)
        summary.written_back += len(sent)
        if progress:
            progress("predict", index + 1, len(new))
    return summary, write_back


def _new_studies(
    client: PacsClient,
    fresh: dict[str, str],
    progress: Callable[[str, int, int], None] | None,
    should_stop: ShouldStop | None,
) -> list[_NewStudy]:
    """The new studies with their attributes (one QIDO question each), oldest first: the window moves on
    behind the screened ones, so a poll that stops half way does not leave older ones behind."""
    found = []
    for index, (pseudonym, uid) in enumerate(sorted(fresh.items())):
        if should_stop is not None and should_stop():
            raise Cancelled("Cancelled while looking at the new studies; the next poll goes on.")
        attributes = client.study_attributes(uid)
        when = study_datetime(attributes.get("StudyDate"), attributes.get("StudyTime"))
        found.append(_NewStudy(pseudonym, uid, attributes, when))
        if progress:
            progress("look", index + 1, len(fresh))
    return sorted(found, key=lambda s: (s.when is None, s.when or dt.datetime.min, s.pseudonym))


def _import(
    engine: Engine,
    connection_id: int,
    criteria: SearchCriteria,
    client: PacsClient,
    job_id: int | None,
    progress: Callable[[str, int, int], None] | None,
    should_stop: ShouldStop | None,
) -> tuple[int, int]:
    """(imported, left out) by importing the window; instances imported before are not fetched again."""
    report: Report | None = (lambda done, total: progress("import", done, total)) if progress else None
    try:
        summary = import_instances(
            engine, connection_id, criteria, job_id=job_id, progress=report, should_stop=should_stop,
            client=client,
        )  # fmt: skip
    except Cancelled:
        raise Cancelled("Cancelled while importing the new studies; the next poll goes on.") from None
    return summary.imported, summary.skipped


# ------------------------------------------------------------------------------------------------------
# The job handler

_STAGE_TEXT = {
    "look": ("import", "Looking at new studies: {done:,} of {total:,}"),
    "import": ("import", "Importing new studies: {done:,} of {total:,} instances"),
    "predict": ("predict", "Screening new studies: {done:,} of {total:,}"),
}


def run_pacs_screen(run: JobRun, job: TrainingJob) -> None:
    from core.inference.predictor import Predictor
    from jobs.targets import version_or_active

    params = PacsScreenParams.from_dict(job.params)
    with session_scope(run.engine, read_only=True) as session:
        version = version_or_active(session, params.version_id)
        name, version_id, model_dir = version.name, version.id, registry.usable_model_dir(version)
    device = None if run.settings.device == "auto" else run.settings.device
    run.update(stage="import", stage_text="Asking the PACS for new studies", version=name, force=True)

    def load_predictor():
        return Predictor.from_path(model_dir, backend=run.settings.eval_backend, device=device)

    def progress(step: str, done: int, total: int) -> None:
        stage, text = _STAGE_TEXT[step]
        run.update(stage=stage, stage_text=text.format(done=done, total=total), fraction=done / max(total, 1))

    summary, write_back = screen_connection(
        run.engine, params.connection_id, load_predictor, version_id, name, job_id=job.id, progress=progress,
        should_stop=run.should_cancel,
    )  # fmt: skip
    with session_scope(run.engine) as session:
        run.succeed(session, summary.sentence(name, write_back))


# ------------------------------------------------------------------------------------------------------
# Queueing: the page's "Screen now", and the worker's polling


def enqueue_pacs_screen(
    session: Session, connection_id: int, created_by: User | None = None, *, version_id: int | None = None
) -> TrainingJob:
    """Queue a poll now (whether or not the connection is polled on its own); refused while one is queued
    or running."""
    row = pacs.connection_row(session, connection_id)
    params = PacsScreenParams(connection_id, version_id)
    state = screening.screening_state(session, connection_id)
    active = screening.active_screen_job(session, connection_id)
    if active is None and screening.take_turn(session, connection_id, seen_job_id=state.job_id):
        job = enqueue_job(session, params.to_dict(), kind=JOB_PACS_SCREEN, created_by=created_by)
        screening.record_screen_job(session, connection_id, job.id)
        return job
    active = active or screening.active_screen_job(session, connection_id)
    raise JobParamsError(
        f"A screening of the PACS connection {row.name!r} is already queued or running"
        + (f" (job #{active})." if active else ".")
    )


def enqueue_due_screens(engine: Engine, now: dt.datetime | None = None) -> list[int]:
    """Queue a poll of each connection that is due (polled on its own, its interval past since the last
    one was queued, and none queued or running): the ids of the jobs queued. One query when none is due."""
    with session_scope(engine, read_only=True) as session:
        due = screening.due_connections(session, now)
    queued = []
    for connection_id, every_s, seen_job_id in due:
        with session_scope(engine) as session:
            if screening.take_turn(session, connection_id, seen_job_id=seen_job_id, every_s=every_s, now=now):
                params = PacsScreenParams(connection_id).to_dict()
                job = enqueue_job(session, params, kind=JOB_PACS_SCREEN)
                screening.record_screen_job(session, connection_id, job.id)
                queued.append(job.id)
    return queued
