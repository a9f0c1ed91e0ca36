"""The "screen" job: a version's (default: the active one's) out-of-distribution gate over every imported
image; the flagged ones are stored as suggested exclusions (db.ood_suspects) for reviewers to judge.

Nothing is dropped, excluded or relabelled: an image leaves training only when a reader or an admin
excludes it in a review. A file the X-ray reader refuses is listed too ("unreadable", with the reader's
sentence). The gate is the one in the version's model card (`python -m core ood fit`); a version without
one gets the pixel checks only (blank, noise, document, colour), and the job says so.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.errors import Cancelled
from db.engine import session_scope
from db.models import TrainingJob
from db.ood_suspects import UNREADABLE, Flag, record_screening
from jobs.batch_predict import Batch, predict_batches
from jobs.params import JobParamsError
from jobs.progress import ImageCount
from jobs.run import JobRun
from jobs.targets import images_with_files, version_or_active

JOB_SCREEN = "screen_ood"
BATCH = 16
WRITE_EVERY = 512  # images whose verdicts are stored per transaction
NO_GATE_NOTE = (
    "{name} has no OOD gate fitted for its weights, so only the blank, noise, document and colour checks "
    "ran (fit one with: python -m core ood fit MODEL_DIR)."
)


@dataclass(frozen=True)
class ScreenParams:
    """Screen every imported image with a version's gate (None: the active version)."""

    version_id: int | None = None

    def __post_init__(self) -> None:
        value = self.version_id
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise JobParamsError(f"The version id must be a whole number, not {value!r}.")

    def to_dict(self) -> dict[str, Any]:
        return {"version_id": self.version_id}

    @classmethod
    def from_dict(cls, values: Any) -> ScreenParams:
        if not isinstance(values, dict):
            raise JobParamsError("The parameters of a screening job must be a mapping.")
        unknown = sorted(set(values) - {"version_id"})
        if unknown:
            raise JobParamsError(f"Unknown screening parameter(s): {', '.join(unknown)}.")
        return cls(**values)


def _read(path: str):
    """(grey pixels, the file's bytes) of an X-ray file, or the sentence saying why it was refused."""
    from pathlib import Path

    from core.imaging.reader import ImageRejected, read_xray

    try:
        data = Path(path).read_bytes()
        return read_xray(data).pixels, data
    except ImageRejected as exc:
        return str(exc)
    except OSError as exc:
        return f"The file could not be opened ({exc.strerror or exc})."


def run_screen(run: JobRun, job: TrainingJob) -> None:
    from core.inference.predictor import Predictor
    from core.prefetch import prefetch_map

    params = ScreenParams.from_dict(job.params)
    with session_scope(run.engine, read_only=True) as session:
        version = version_or_active(session, params.version_id)
        images = images_with_files(session)
        version_id, name, model_dir = version.id, version.name, version.path
    device = None if run.settings.device == "auto" else run.settings.device
    predictor = Predictor.from_path(model_dir, backend=run.settings.eval_backend, device=device)
    if predictor.ood_gate is None:
        run.message(NO_GATE_NOTE.format(name=name))
    text = f"Screening with {name}'s OOD gate"
    run.update(stage="predict", stage_text=text, version=name, force=True)
    count = ImageCount(total=len(images))
    n_flagged = 0
    screened: list[int] = []
    flagged: dict[int, Flag] = {}
    decoded = prefetch_map(_read, [path for _, path in images], workers=2, depth=2 * BATCH, name="screen")

    def batches() -> Iterator[Batch]:
        for start in range(0, len(images), BATCH):
            part = images[start : start + BATCH]
            ids: list[int] = []
            pixels: list[np.ndarray] = []
            data: list[bytes | None] = []
            for image_id, _ in part:
                item = next(decoded)
                if isinstance(item, str):  # the reader's sentence: listed too, for a person to look at
                    count.unreadable += 1
                    flagged[image_id] = Flag(UNREADABLE, item, 0.0)
                else:
                    ids.append(image_id)
                    pixels.append(item[0])
                    data.append(item[1])
            screened.extend(image_id for image_id, _ in part)
            yield Batch(pixels, len(part), ids, data)

    def store() -> None:
        nonlocal n_flagged
        with session_scope(run.engine) as session:
            n_flagged += record_screening(session, version_id, screened, flagged, job_id=job.id)
        count.stored = n_flagged
        screened.clear()
        flagged.clear()

    def progress(done: int) -> None:
        count.done = done
        run.update(stage="predict", stage_text=text, fraction=done / max(len(images), 1), predicted=count)

    try:
        for batch, predictions in predict_batches(
            predictor, batches(), check_ood=True, on_done=progress, should_stop=run.should_cancel
        ):
            for image_id, verdict in zip(batch.keys, (p.ood for p in predictions), strict=True):
                if verdict.flagged:
                    flagged[image_id] = Flag(verdict.check, verdict.reason, verdict.score)
            if len(screened) >= WRITE_EVERY:
                store()
    finally:
        decoded.close()
    if count.done < len(images):
        raise Cancelled(f"Cancelled after screening {count.done:,} of {len(images):,} images.")
    if screened:
        store()
        run.update(stage="predict", stage_text=text, fraction=1.0, predicted=count, force=True)
    with session_scope(run.engine) as session:
        run.succeed(
            session,
            f"Screened {count.done:,} images with {name}: {n_flagged:,} suggested exclusions "
            f"({count.unreadable:,} unreadable), listed for review; no image was dropped.",
        )
