"""Import from a PACS (issue 18): the worker's pacs_import job kind (write-back: jobs.pacs_write_back).

pacs_import: every instance of the studies a search finds (jobs.dicomweb: QIDO-RS) is looked at once.
A single-frame frontal (PA/AP) CR or DX radiograph is fetched (WADO-RS), de-identified
(core.imaging.deidentify: keyed-hash pseudonyms, so a re-import maps to the same ones), checked to
decode, and stored as an image (an upload under CHEXNET_HOME/uploads) with its pacs_instances row in one
transaction: nothing is half-imported. Anything else is recorded as skipped with the sentence saying
why. Progress is reported per instance; cancel stops between two instances; a failed, cancelled or
interrupted import resumes by running it again (what was imported or skipped is not fetched again).
A fetch that fails in a way that may pass (jobs.dicomweb.PacsTransientError) is tried again after
FETCH_RETRY_DELAYS_S; an instance too large by the size its search row gives is left out unfetched.


Nothing identifying is logged or stored: sentences and messages count instances, never name them.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from core.errors import Cancelled
from core.imaging.deidentify import (
    IMAGE_MODALITIES,
    XRAY_SOP_CLASSES,
    InstanceRefused,
    deidentify,
    pseudonymous_uid,
    seal,
)
from db import pacs
from db.engine import session_scope
from db.jobs import enqueue_job, get_job
from db.models import TrainingJob, User
from jobs.dicomweb import (
    MAX_INSTANCE_BYTES,
    InstanceRef,
    PacsClient,
    PacsSettings,
    PacsTransientError,
    SearchCriteria,
    count_studies,
)
from jobs.params import JobParamsError
from jobs.run import JobRun

JOB_PACS_IMPORT = "pacs_import"
MAX_LISTED_SKIPS = 20  # skip sentences also put in the job's messages; all are in pacs_instances

ShouldStop = Callable[[], bool]
Report = Callable[[int, int], None]
# (stage, seconds, instances): called after each stage's work, for a benchmark (scripts/bench_pacs_import.py).
StageTimer = Callable[[str, float, int], None]
STAGES = ("search", "fetch", "deidentify", "decode_check", "register")
# Waits before the 2nd and 3rd try of an instance's fetch after a failure that may pass (no answer in
# time, a connection refused or reset, a broken transfer, HTTP 429/5xx); wrong credentials or a 404 are
# not tried again.
FETCH_RETRY_DELAYS_S = (0.5, 1.0)


@dataclass(frozen=True)
class PacsImportParams:
    connection_id: int
    date_from: str = ""
    date_to: str = ""
    modalities: tuple[str, ...] = IMAGE_MODALITIES
    description: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.connection_id, bool) or not isinstance(self.connection_id, int):
            raise JobParamsError("The PACS connection must be given by its id.")
        self.criteria()  # dates and modalities are checked by SearchCriteria

    def criteria(self) -> SearchCriteria:
        return SearchCriteria(self.date_from, self.date_to, tuple(self.modalities), self.description)

    def to_dict(self) -> dict[str, Any]:
        return {
            "connection_id": self.connection_id, "date_from": self.date_from, "date_to": self.date_to,
            "modalities": list(self.modalities), "description": self.description,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, values: Any) -> PacsImportParams:
        if not isinstance(values, dict):
            raise JobParamsError("The parameters of a PACS import must be a mapping.")
        unknown = sorted(set(values) - {"connection_id", "date_from", "date_to", "modalities", "description"})
        if unknown:
            raise JobParamsError(f"Unknown PACS import parameter(s): {', '.join(unknown)}.")
        values = dict(values)
        if "modalities" in values:
            values["modalities"] = tuple(values["modalities"])
        return cls(**values)


@dataclass
class ImportSummary:
    found: int = 0  # instances the search found
    studies: int = 0
    imported: int = 0
    skipped: int = 0
    already_done: int = 0  # looked at by an earlier run of this import
    skip_reasons: list[str] = field(default_factory=list)
    image_ids: list[int] = field(default_factory=list)

    @property
    def done(self) -> int:
        return self.imported + self.skipped + self.already_done

    def sentence(self) -> str:
        return (
            f"Imported {self.imported:,} of {self.found:,} instances in {self.studies:,} studies "
            f"({self.skipped:,} left out, listed with why; {self.already_done:,} done before)."
        )


def client_for(session, connection_id: int, timeout_s: float | None = None) -> PacsClient:
    """A client of a saved connection (with its secret, which never leaves this process)."""
    row = pacs.connection_row(session, connection_id)
    timeout = {} if timeout_s is None else {"timeout_s": timeout_s}
    secret = pacs.connection_secret(row)
    return PacsClient(PacsSettings(row.base_url, row.auth, row.username, secret, **timeout))


def preview(client: PacsClient, criteria: SearchCriteria) -> tuple[int, int]:
    """(studies, instances) a search finds: what an import would look at."""
    refs = client.search_instances(criteria)
    return count_studies(refs), len(refs)


def _early_refusal(ref: InstanceRef, criteria: SearchCriteria) -> str | None:
    """Why an instance is left out without fetching it, from what the search said about it."""
    if ref.sop_class_uid and ref.sop_class_uid not in XRAY_SOP_CLASSES:
        return f"It is not a radiograph (SOP class {ref.sop_class_uid}, modality {ref.modality or 'none'})."
    if ref.modality and ref.modality.upper() not in criteria.modalities:
        asked = ", ".join(criteria.modalities)
        return f"Its modality is {ref.modality}, not one the import asked for ({asked})."
    if ref.frames > 1:  # not fetched: a cine loop can be hundreds of megabytes
        return f"It is a multi-frame image ({ref.frames} frames), not a single radiograph."
    return _size_refusal(ref)


def _size_refusal(ref: InstanceRef) -> str | None:
    """Too large to fetch, by the size the search reports: what read_xray would refuse as a possible
    decompression bomb, or more bytes than any instance is downloaded for."""
    from core.imaging.reader import DEFAULT_MAX_PIXELS

    pixels, size = ref.pixels, ref.estimated_bytes
    if pixels is not None and pixels > DEFAULT_MAX_PIXELS:
        return (
            f"It is {ref.columns}x{ref.rows} pixels ({pixels / 1e6:,.0f} megapixels), more than the "
            f"{DEFAULT_MAX_PIXELS / 1e6:,.0f}-megapixel limit, so it is not downloaded."
        )
    if size is not None and size > MAX_INSTANCE_BYTES:
        return (
            f"Its pixel data is about {size / 2**20:,.0f} MB, more than the "
            f"{MAX_INSTANCE_BYTES / 2**20:,.0f} MB limit, so it is not downloaded."
        )
    return None


def _fetch(client: PacsClient, ref: InstanceRef, delays_s: Sequence[float]):
    """client.fetch, tried again after each of `delays_s` while it fails in a way that may pass."""
    for delay in (*delays_s, None):
        try:
            return client.fetch(ref)
        except PacsTransientError:
            if delay is None:
                raise
            time.sleep(delay)
    raise AssertionError("unreachable")


def _checked_copy(
    client: PacsClient, ref: InstanceRef, key: bytes, timed: _Timed, retry_delays_s: Sequence[float]
):
    """The de-identified instance, or raise InstanceRefused / the reader's ImageRejected (one sentence)."""
    from core.imaging.reader import read_xray

    with timed("fetch"):
        ds = _fetch(client, ref, retry_delays_s)
    with timed("deidentify"):
        result = deidentify(ds, key)
    with timed("decode_check"):  # a truncated or undecodable image is refused here, before anything is stored
        read_xray(result.data)
    return result


class _Timed:
    """`with timed(stage):` reports the block's seconds to the stage timer (nothing without one)."""

    def __init__(self, timer: StageTimer | None) -> None:
        self.timer = timer

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        if self.timer is None:
            yield
            return
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timer(stage, time.perf_counter() - started, 1)


def import_instances(
    engine: Engine,
    connection_id: int,
    criteria: SearchCriteria,
    *,
    job_id: int | None = None,
    progress: Report | None = None,
    should_stop: ShouldStop | None = None,
    client: PacsClient | None = None,
    stage_timer: StageTimer | None = None,
    retry_delays_s: Sequence[float] = FETCH_RETRY_DELAYS_S,
) -> ImportSummary:
    """Import what `criteria` finds on the connection (see the module docstring); Cancelled when stopped.

    A PacsError (the PACS went away, refused the credentials, failed inside) ends the run with its
    sentence; every instance stored until then is complete, and running the import again resumes. An
    instance's fetch that fails in a way that may pass is first tried again after each of `retry_delays_s`.
    `stage_timer` (a benchmark's) is told the seconds of each stage (STAGES) and how many instances it did.
    """
    from core.imaging.xray_image import ImageRejected

    key = pacs.pseudonym_key()
    with session_scope(engine, read_only=True) as session:
        client = client or client_for(session, connection_id)
        seen = pacs.seen_sop_pseudonyms(session, connection_id)
    timed = _Timed(stage_timer)
    started = time.perf_counter()
    refs = client.search_instances(criteria)
    if stage_timer is not None:
        stage_timer("search", time.perf_counter() - started, len(refs))
    summary = ImportSummary(found=len(refs), studies=count_studies(refs))
    if progress:
        progress(0, len(refs))
    for ref in refs:
        if should_stop is not None and should_stop():
            raise Cancelled(
                f"Cancelled after {summary.done:,} of {summary.found:,} instances ({summary.imported:,} "
                f"imported, {summary.skipped:,} left out); run the import again to continue."
            )
        sop_pseudonym = pseudonymous_uid(key, ref.sop_uid)
        study_pseudonym = pseudonymous_uid(key, ref.study_uid)
        if sop_pseudonym in seen:
            summary.already_done += 1
        else:
            reason = _early_refusal(ref, criteria)
            result = None
            if reason is None:
                try:
                    result = _checked_copy(client, ref, key, timed, retry_delays_s)
                except (InstanceRefused, ImageRejected) as exc:
                    reason = str(exc)
            with timed("register"), session_scope(engine) as session:
                if result is None:
                    pacs.record_skipped(
                        session, connection_id, sop_pseudonym=sop_pseudonym, study_pseudonym=study_pseudonym,
                        reason=reason or "", job_id=job_id,
                    )  # fmt: skip
                else:
                    link = json.dumps([ref.study_uid, ref.series_uid, ref.sop_uid, ref.sop_class_uid])
                    image = pacs.record_imported(
                        session, connection_id, result.data, sop_pseudonym=sop_pseudonym,
                        study_pseudonym=study_pseudonym, patient_pseudonym=result.patient_pseudonym,
                        source_link=seal(key, sop_pseudonym, link), view=result.view_position,
                        patient_sex=result.patient_sex, patient_age=result.patient_age, job_id=job_id,
                    )  # fmt: skip
                    image_id = image.id
            seen.add(sop_pseudonym)
            if result is None:
                summary.skipped += 1
                summary.skip_reasons.append(reason or "")
            else:
                summary.imported += 1
                summary.image_ids.append(image_id)
        if progress:
            progress(summary.done, summary.found)
    return summary


# ------------------------------------------------------------------------------------------------------
# The job handlers


def run_pacs_import(run: JobRun, job: TrainingJob) -> None:
    params = PacsImportParams.from_dict(job.params)
    text = "Importing from the PACS"

    def progress(done: int, total: int) -> None:
        run.update(stage="import", stage_text=f"{text}: {done:,} of {total:,} instances",
                   fraction=done / max(total, 1))  # fmt: skip

    # A PacsError's sentence ends the job "failed"; what was imported is complete and a re-run resumes.
    summary = import_instances(
        run.engine, params.connection_id, params.criteria(), job_id=job.id, progress=progress,
        should_stop=run.should_cancel,
    )  # fmt: skip
    for reason in summary.skip_reasons[:MAX_LISTED_SKIPS]:
        run.message(f"Left out: {reason}")
    with session_scope(run.engine) as session:
        run.succeed(session, summary.sentence())


# ------------------------------------------------------------------------------------------------------
# What the admin page calls

RESUMABLE = ("failed", "cancelled", "interrupted")


def enqueue_pacs_import(
    session: Session, params: PacsImportParams, created_by: User | None = None
) -> TrainingJob:
    pacs.connection_row(session, params.connection_id)  # refused now, not in the worker, if it is gone
    return enqueue_job(session, params.to_dict(), kind=JOB_PACS_IMPORT, created_by=created_by)


def resume_pacs_import(session: Session, job_id: int, created_by: User | None = None) -> TrainingJob:
    """Run a stopped import again: what it imported or skipped is not fetched again."""
    job = get_job(session, job_id)
    if job.kind != JOB_PACS_IMPORT or job.status not in RESUMABLE:
        raise JobParamsError(f"Job #{job.id} is not a stopped PACS import.")
    return enqueue_pacs_import(session, PacsImportParams.from_dict(job.params), created_by)


def last_stopped_import(session: Session) -> TrainingJob | None:
    query = select(TrainingJob).where(TrainingJob.kind == JOB_PACS_IMPORT).order_by(TrainingJob.id.desc())
    job = session.scalars(query.limit(1)).first()
    return job if job is not None and job.status in RESUMABLE else None
