"""Import from a PACS (issue 18): the worker's pacs_import job kind (write-back: jobs.pacs_write_back).

pacs_import: every instance of the studies a search finds (jobs.dicomweb: QIDO-RS) is looked at once.
A single-frame frontal (PA/AP) CR or DX radiograph is fetched (WADO-RS), de-identified
(core.imaging.deidentify: keyed-hash pseudonyms, so a re-import maps to the same ones), checked to
decode, and stored as an image (an upload under CHEXNET_HOME/uploads) with its pacs_instances row in one
transaction: nothing is half-imported. Anything else is recorded as skipped with the sentence saying
why. Progress is reported per instance; cancel stops between two instances; a failed, cancelled or
interrupted import resumes by running it again (what was imported or skipped is not fetched again).


Nothing identifying is logged or stored: sentences and messages count instances, never name them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
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
from jobs.dicomweb import InstanceRef, PacsClient, PacsSettings, SearchCriteria, count_studies
from jobs.params import JobParamsError
from jobs.run import JobRun

JOB_PACS_IMPORT = "pacs_import"
MAX_LISTED_SKIPS = 20  # skip sentences also put in the job's messages; all are in pacs_instances

ShouldStop = Callable[[], bool]
Report = Callable[[int, int], None]


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
    return None


def _checked_copy(client: PacsClient, ref: InstanceRef, key: bytes):
    """The de-identified instance, or raise InstanceRefused / the reader's ImageRejected (one sentence)."""
    from core.imaging.reader import read_xray

    result = deidentify(client.fetch(ref), key)
    read_xray(result.data)  # a truncated or undecodable image is refused here, before anything is stored
    return result


def import_instances(
    engine: Engine,
    connection_id: int,
    criteria: SearchCriteria,
    *,
    job_id: int | None = None,
    progress: Report | None = None,
    should_stop: ShouldStop | None = None,
    client: PacsClient | None = None,
) -> ImportSummary:
    """Import what `criteria` finds on the connection (see the module docstring); Cancelled when stopped.

    A PacsError (the PACS went away, refused the credentials, failed inside) ends the run with its
    sentence; every instance stored until then is complete, and running the import again resumes.
    """
    from core.imaging.xray_image import ImageRejected

    key = pacs.pseudonym_key()
    with session_scope(engine, read_only=True) as session:
        client = client or client_for(session, connection_id)
        seen = pacs.seen_sop_pseudonyms(session, connection_id)
    refs = client.search_instances(criteria)
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
                    result = _checked_copy(client, ref, key)
                except (InstanceRefused, ImageRejected) as exc:
                    reason = str(exc)
            with session_scope(engine) as session:
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
