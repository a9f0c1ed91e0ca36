"""The "predict" job: a version's (default: the active one's) 14 probabilities for every imported image,
stored in `predictions`; the review page's "Model disagrees most" queue ranks images by them."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.errors import Cancelled
from core.evaluate import _read_images
from core.predictor import Predictor
from db import registry
from db.engine import session_scope
from db.models import Image, TrainingJob
from jobs.params import JobParamsError, PredictParams
from jobs.progress import ImageCount
from jobs.run import JobRun

BATCH = 32
WRITE_EVERY = 512  # predictions stored per transaction


def _images_with_files(session: Session) -> list[tuple[int, str]]:
    statement = select(Image.id, Image.path).where(Image.path.is_not(None)).order_by(Image.id)
    return [(image_id, path) for image_id, path in session.execute(statement)]


def run_predict(run: JobRun, job: TrainingJob) -> None:
    params = PredictParams.from_dict(job.params)
    with session_scope(run.engine, read_only=True) as session:
        version = registry.get_version(session, params.version_id) if params.version_id is not None else None
        version = version or registry.get_active_version(session)
        if version is None:
            raise JobParamsError("No model version is active; promote one first.")
        # A missing or unreadable folder fails the job with the registry's sentence naming the version.
        model_dir = registry.usable_model_dir(version)
        images = _images_with_files(session)
        version_id, name = version.id, version.name
    device = None if run.settings.device == "auto" else run.settings.device
    predictor = Predictor.from_path(model_dir, backend=run.settings.eval_backend, device=device)
    text = f"Predicting with {name}"
    run.update(stage="predict", stage_text=text, version=name, force=True)
    count = ImageCount(total=len(images))
    pending: dict[int, dict[str, float]] = {}
    pixels_iter = _read_images([path for _, path in images])
    try:
        for start in range(0, len(images), BATCH):
            if run.should_cancel():
                raise Cancelled(f"Cancelled after {count.stored:,} of {len(images):,} images.")
            ids, pixels = [], []
            for image_id, _ in images[start : start + BATCH]:
                item = next(pixels_iter)
                if isinstance(item, str):  # the sentence saying why the file was refused
                    count.unreadable += 1
                else:
                    ids.append(image_id)
                    pixels.append(item)
            for image_id, prediction in zip(ids, predictor.predict(pixels, batch_size=BATCH), strict=True):
                pending[image_id] = prediction.probabilities
            count.done = min(start + BATCH, len(images))
            if len(pending) >= WRITE_EVERY or count.done == len(images):
                with session_scope(run.engine) as session:
                    count.stored += registry.save_predictions(session, version_id, pending)
                pending = {}
            run.update(
                stage="predict", stage_text=text, fraction=count.done / max(len(images), 1), predicted=count
            )
    finally:
        pixels_iter.close()
    with session_scope(run.engine) as session:
        run.succeed(
            session, f"Stored {count.stored:,} predictions of {name!r} ({count.unreadable:,} unreadable)."
        )
