"""Write results back to a PACS (issue 18): the worker's pacs_write_back job kind.

Only for connections with write-back on: for each imported instance not written back yet, the model's 14
findings as a Comprehensive SR and the top finding's CAM overlay as a Secondary Capture, both in the
source study (its real Study Instance UID, unsealed from the pseudonym link) in new series, sent with
STOW-RS. One instance's part (`predict_image`, then `send_results`) is also what the screening job
(jobs.pacs_screen) does for each instance of a new study.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from core.errors import Cancelled, UserError
from core.imaging.deidentify import unseal
from core.imaging.dicom_sr import FindingResult, ModelIdentity, SourceImage, findings_sr, overlay_capture
from db import pacs
from db.engine import session_scope
from db.jobs import enqueue_job
from db.models import TrainingJob, User
from jobs.dicomweb import PacsClient
from jobs.pacs_import import Report, ShouldStop, client_for
from jobs.params import JobParamsError
from jobs.run import JobRun

JOB_PACS_WRITE_BACK = "pacs_write_back"


def write_back_off(name: str) -> str:
    return f"Writing results back is off for the PACS connection {name!r}; turn it on first."


def source_image(key: bytes, item: pacs.WriteBackItem) -> SourceImage:
    """The real UIDs of an imported instance, unsealed from its pseudonym link (one sentence when the key
    cannot open it)."""
    try:
        study, series, sop, sop_class = json.loads(unseal(key, item.sop_pseudonym, item.source_link))
    except ValueError:
        raise UserError(
            "An imported instance's link to the PACS cannot be opened with this pseudonym key, so its "
            "results cannot be written back."
        ) from None
    return SourceImage(study, series, sop, sop_class)


@dataclass(frozen=True)
class PredictedImage:
    """An imported image as the model saw it (the grey pixels, for the CAM overlay) and its prediction."""

    pixels: Any
    prediction: Any  # core.inference.predictor.Prediction


def predict_image(predictor, path: str) -> PredictedImage:
    """The model's prediction of an imported image's file (OSError or ImageRejected when it is gone or
    unreadable)."""
    from pathlib import Path

    from core.imaging.reader import read_xray

    data = Path(path).read_bytes()
    pixels = read_xray(data).pixels
    return PredictedImage(pixels, predictor.predict_one(pixels, file_bytes=data))


def send_results(
    client: PacsClient,
    key: bytes,
    item: pacs.WriteBackItem,
    predictor,
    model: ModelIdentity,
    predicted: PredictedImage,
    *,
    study: dict[str, Any] | None = None,
) -> None:
    """One instance's SR and CAM Secondary Capture, stored in its source study with STOW-RS. `study`: the
    PACS's own patient and study attributes (looked up when not given), held in memory only."""
    from core.inference.cam import render_overlay

    source = source_image(key, item)
    prediction = predicted.prediction
    findings = [
        FindingResult(label, prediction.probabilities[label], predictor.thresholds[label])
        for label in prediction.labels
    ]
    top = prediction.most_probable()
    overlay = render_overlay(predicted.pixels, prediction.cam(top))
    study = study if study is not None else client.study_attributes(source.study_uid)
    ood = prediction.ood
    flagged, reason = bool(ood and ood.flagged), ood.reason if ood else ""
    report = findings_sr(study, source, findings, model, ood_flagged=flagged, ood_reason=reason)
    capture = overlay_capture(study, source, overlay, finding=top, model=model)
    client.store([report, capture], study_uid=source.study_uid)


def require_write_back(session: Session, connection_id: int, refusal: type[UserError] = UserError) -> None:
    """Raise `refusal` (one sentence) unless the connection's write-back is on."""
    row = pacs.connection_row(session, connection_id)
    if not row.write_back:
        raise refusal(write_back_off(row.name))


def writable_client(session: Session, connection_id: int) -> PacsClient:
    """The connection's client; refused (one sentence) when its write-back is off."""
    require_write_back(session, connection_id)
    return client_for(session, connection_id)


def write_back_results(
    engine: Engine,
    connection_id: int,
    predictor,
    model: ModelIdentity,
    *,
    again: bool = False,
    progress: Report | None = None,
    should_stop: ShouldStop | None = None,
    client: PacsClient | None = None,
) -> int:
    """Send each imported instance's SR and CAM Secondary Capture to the PACS; returns how many were sent.
    Refused (one sentence) when the connection's write-back is off."""
    key = pacs.pseudonym_key()
    with session_scope(engine, read_only=True) as session:
        client = client or writable_client(session, connection_id)
        items = pacs.write_back_candidates(session, connection_id, again=again)
    sent = 0
    for item in items:
        if should_stop is not None and should_stop():
            raise Cancelled(f"Cancelled after writing back {sent:,} of {len(items):,} results.")
        send_results(client, key, item, predictor, model, predict_image(predictor, item.path))
        with session_scope(engine) as session:
            pacs.mark_written(session, item.instance_id)
        sent += 1
        if progress:
            progress(sent, len(items))
    return sent


@dataclass(frozen=True)
class PacsWriteBackParams:
    connection_id: int
    version_id: int | None = None
    again: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"connection_id": self.connection_id, "version_id": self.version_id, "again": self.again}

    @classmethod
    def from_dict(cls, values: Any) -> PacsWriteBackParams:
        if not isinstance(values, dict) or not isinstance(values.get("connection_id"), int):
            raise JobParamsError("A write-back job needs the id of its PACS connection.")
        unknown = sorted(set(values) - {"connection_id", "version_id", "again"})
        if unknown:
            raise JobParamsError(f"Unknown write-back parameter(s): {', '.join(unknown)}.")
        return cls(**values)


def model_identity(predictor, version_name: str, version_id: int | None) -> ModelIdentity:
    return ModelIdentity(
        name=predictor.name,
        version=f"{version_name} (#{version_id})" if version_id is not None else version_name,
        sha256=predictor.artifact.weights_digest(),
    )


def run_pacs_write_back(run: JobRun, job: TrainingJob) -> None:
    from core.inference.predictor import Predictor
    from jobs.targets import version_or_active

    params = PacsWriteBackParams.from_dict(job.params)
    with session_scope(run.engine, read_only=True) as session:
        version = version_or_active(session, params.version_id)
        name, version_id, model_dir = version.name, version.id, version.path
    device = None if run.settings.device == "auto" else run.settings.device
    predictor = Predictor.from_path(model_dir, backend=run.settings.eval_backend, device=device)

    def progress(done: int, total: int) -> None:
        run.update(stage="predict", stage_text=f"Writing results back: {done:,} of {total:,}",
                   fraction=done / max(total, 1), version=name)  # fmt: skip

    sent = write_back_results(
        run.engine, params.connection_id, predictor, model_identity(predictor, name, version_id),
        again=params.again, progress=progress, should_stop=run.should_cancel,
    )  # fmt: skip
    with session_scope(run.engine) as session:
        run.succeed(session, f"Wrote {sent:,} reports and heat maps back to the PACS with {name}.")


def enqueue_pacs_write_back(
    session: Session, connection_id: int, created_by: User | None = None, *, again: bool = False
) -> TrainingJob:
    require_write_back(session, connection_id, JobParamsError)  # refused now, not in the worker
    params = PacsWriteBackParams(connection_id, again=again)
    return enqueue_job(session, params.to_dict(), kind=JOB_PACS_WRITE_BACK, created_by=created_by)
