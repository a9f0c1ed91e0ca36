"""Write the readers' labels back to a PACS (issue 18): the worker's pacs_label_write_back job kind.

Only for connections with write-back on. For each imported instance whose effective label comes from
readers (an adjudication, or the consensus of their reviews: not the NLP label, not an image nobody
read), a Comprehensive SR of the 14 findings, each Present, Absent or Uncertain, how the label was decided
and when (core.imaging.dicom_sr.label_sr), in the source study, sent with STOW-RS. Readers are counted,
never named.

Left out, and counted in the job's message: images the readers excluded (they carry no finding label)
and those whose readers disagree with no adjudication yet (a disputed image's consensus is never shown
as its answer, db.reviews).

The label SR's UIDs are keyed hashes of the source instance and of what the label says, so the same label
is the same object. The last one sent is recorded (pacs_instances.label_sr_uid): an unchanged label is
neither sent nor asked for again; one not recorded is looked for in the PACS first (WADO-RS); a changed
label is a new object in the same series that names the last one in its Predecessor Documents.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from core.errors import Cancelled
from core.imaging.deidentify import InstanceRefused
from core.imaging.dicom_sr import COMPREHENSIVE_SR, ReaderLabel, SourceImage, label_sr, label_sr_uids
from core.labels import FINDINGS
from db import pacs
from db.engine import session_scope
from db.jobs import enqueue_job
from db.models import (
    FINDING_COLUMNS,
    Image,
    PacsInstance,
    ReadStatus,
    ReviewedLabel,
    TrainingJob,
    User,
    findings_in,
)
from jobs.dicomweb import InstanceRef, PacsClient
from jobs.pacs_import import Report, ShouldStop
from jobs.pacs_write_back import require_write_back, source_image, writable_client
from jobs.params import JobParamsError
from jobs.run import JobRun

JOB_PACS_LABEL_WRITE_BACK = "pacs_label_write_back"


@dataclass(frozen=True)
class LabelCandidate:
    """An imported instance with a readers' label: `label` None when it is left out (`left_out` says why:
    "excluded" or "disputed")."""

    item: pacs.WriteBackItem  # the instance, as the results write-back knows it
    label: ReaderLabel | None
    left_out: str = ""
    last_sent: str | None = None  # the SOP Instance UID of the label SR sent for it before


@dataclass(frozen=True)
class LabelWriteBack:
    sent: int
    already_there: int
    excluded: int
    disputed: int

    @property
    def message(self) -> str:
        return (
            f"Wrote {self.sent:,} reader labels back to the PACS ({self.already_there:,} already there; "
            f"left out: {self.excluded:,} excluded, {self.disputed:,} disputed and not adjudicated)."
        )


def label_candidates(session: Session, connection_id: int) -> list[LabelCandidate]:
    """The connection's imported instances whose effective label comes from readers, in import order:
    one query (pacs_instances joined to reviewed_labels, and read_status for Uncertain and disputes)."""
    instance = [PacsInstance.id, Image.id, Image.path, PacsInstance.sop_pseudonym, PacsInstance.source_link]
    label = [ReviewedLabel.source, ReviewedLabel.n_reviews, ReviewedLabel.exclude, ReviewedLabel.updated_at]
    status = [ReadStatus.uncertain_mask, ReadStatus.open_dispute, PacsInstance.label_sr_uid]
    findings = [getattr(ReviewedLabel, column) for column in FINDING_COLUMNS]
    query = (
        select(*instance, *label, *status, *findings)
        .join(Image, Image.id == PacsInstance.image_id)
        .join(ReviewedLabel, ReviewedLabel.image_id == PacsInstance.image_id)
        .outerjoin(ReadStatus, ReadStatus.image_id == PacsInstance.image_id)
        .where(
            PacsInstance.connection_id == connection_id,
            PacsInstance.status == "imported",
            PacsInstance.source_link.is_not(None),
        )
        .order_by(PacsInstance.id)
    )
    found = []
    for row in session.execute(query):
        item = pacs.WriteBackItem(*row[: len(instance)])
        source, n_reviews, exclude, decided_at, uncertain_mask, disputed, last_sent = row[
            len(instance) : -len(findings)
        ]
        if exclude or disputed:
            found.append(LabelCandidate(item, None, "excluded" if exclude else "disputed"))
            continue
        uncertain = set(findings_in(uncertain_mask))
        states = {
            finding: "uncertain" if finding in uncertain else "present" if value else "absent"
            for finding, value in zip(FINDINGS, row[-len(findings) :], strict=True)
        }
        label = ReaderLabel(states, source, int(n_reviews), decided_at)
        found.append(LabelCandidate(item, label, last_sent=last_sent))
    return found


def _held(client: PacsClient, source: SourceImage, series_uid: str, sop_uid: str) -> bool:
    """Whether the PACS holds this label SR already (a 404 from WADO-RS: it does not)."""
    try:
        client.fetch(InstanceRef(source.study_uid, series_uid, sop_uid, COMPREHENSIVE_SR, "SR"))
    except InstanceRefused:
        return False
    return True


def write_back_labels(
    engine: Engine,
    connection_id: int,
    *,
    progress: Report | None = None,
    should_stop: ShouldStop | None = None,
    client: PacsClient | None = None,
) -> LabelWriteBack:
    """Send the readers' label of each imported instance that has one and that the PACS does not hold yet.
    Refused (one sentence) when the connection's write-back is off."""
    key = pacs.pseudonym_key()
    with session_scope(engine, read_only=True) as session:
        client = client or writable_client(session, connection_id)
        candidates = label_candidates(session, connection_id)
    todo = [candidate for candidate in candidates if candidate.label is not None]
    sent = already = 0
    for done, candidate in enumerate(todo, start=1):
        if should_stop is not None and should_stop():
            raise Cancelled(f"Cancelled after writing back {sent:,} of {len(todo):,} reader labels.")
        assert candidate.label is not None
        source = source_image(key, candidate.item)
        series_uid, sop_uid = label_sr_uids(source, candidate.label, key)
        # Known sent (this database says so), or held already (sent before the column existed, or by
        # a database restored from an older backup): nothing to send.
        if candidate.last_sent == sop_uid or _held(client, source, series_uid, sop_uid):
            already += 1
        else:
            study = client.study_attributes(source.study_uid)  # the PACS's own values, in memory only
            report = label_sr(study, source, candidate.label, uid_key=key, replaces=candidate.last_sent)
            client.store([report], study_uid=source.study_uid)
            sent += 1
        if candidate.last_sent != sop_uid:
            with session_scope(engine) as session:
                pacs.mark_label_written(session, candidate.item.instance_id, sop_uid)
        if progress:
            progress(done, len(todo))
    left_out = [candidate.left_out for candidate in candidates]
    return LabelWriteBack(sent, already, left_out.count("excluded"), left_out.count("disputed"))


@dataclass(frozen=True)
class PacsLabelWriteBackParams:
    connection_id: int

    def to_dict(self) -> dict[str, Any]:
        return {"connection_id": self.connection_id}

    @classmethod
    def from_dict(cls, values: Any) -> PacsLabelWriteBackParams:
        if not isinstance(values, dict) or not isinstance(values.get("connection_id"), int):
            raise JobParamsError("A label write-back job needs the id of its PACS connection.")
        unknown = sorted(set(values) - {"connection_id"})
        if unknown:
            raise JobParamsError(f"Unknown label write-back parameter(s): {', '.join(unknown)}.")
        return cls(**values)


def run_pacs_label_write_back(run: JobRun, job: TrainingJob) -> None:
    params = PacsLabelWriteBackParams.from_dict(job.params)

    def progress(done: int, total: int) -> None:
        run.update(stage="write_back", stage_text=f"Writing reader labels back: {done:,} of {total:,}",
                   fraction=done / max(total, 1))  # fmt: skip

    result = write_back_labels(
        run.engine, params.connection_id, progress=progress, should_stop=run.should_cancel
    )
    with session_scope(run.engine) as session:
        run.succeed(session, result.message)


def enqueue_pacs_label_write_back(
    session: Session, connection_id: int, created_by: User | None = None
) -> TrainingJob:
    require_write_back(session, connection_id, JobParamsError)  # refused now, not in the worker
    params = PacsLabelWriteBackParams(connection_id)
    return enqueue_job(session, params.to_dict(), kind=JOB_PACS_LABEL_WRITE_BACK, created_by=created_by)
