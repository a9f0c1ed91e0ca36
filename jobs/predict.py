"""The "predict" job: a version's (default: the active one's) 14 probabilities for every imported image,
stored in `predictions`; the review page's "Model disagrees most" queue ranks images by them.

The files are read once into the preprocessed image cache (core.data.cache: decoded in parallel, centre
squares at the model's resize, 256 px for CheXNet, so exactly the model input the files give), which
every later version's predictions reuse.
The network then runs over the cache BATCH images at a time, in this process or, with more than one
process per job (CHEXNET_WORKER_GPUS), sharded over processes with torchrun (jobs.predict_shards).
Predictions are stored WRITE_EVERY per transaction; storing replaces the version's earlier prediction
of an image, so a rerun never duplicates rows.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from core import paths
from core.data.cache import ImageCache, build_cache
from core.errors import Cancelled, UserError
from core.inference.artifact import read_artifact
from core.inference.predictor import Predictor
from db import registry
from db.engine import session_scope
from db.models import TrainingJob
from jobs import torchrun
from jobs.folders import run_folder
from jobs.params import PredictParams
from jobs.predict_shards import ShardSpec, merge_shards, predict_rows, shard_files
from jobs.progress import ImageCount
from jobs.run import JobRun
from jobs.targets import images_with_files, version_or_active


class PredictionError(UserError, RuntimeError):
    """The sharded prediction failed (one sentence, naming its log)."""


WRITE_EVERY = 2_000  # predictions stored per transaction


def registry_cache_folder(size: int) -> Path:
    """One cache of every imported image per size, keyed by its file's path (uploads and datasets alike);
    the size is the model's resize (256 px for CheXNet), so cached pixels are exactly the model's input."""
    return paths.cache_dir() / "images" / f"registry-{size}px"


def cache_progress(run: JobRun) -> Callable[[int, int], None]:
    """Shows the image cache being built on the job's page (the "cache" stage) and cancels between images."""
    run.update(stage="cache", stage_text="Preparing the image cache", force=True)

    def progress(done: int, total: int) -> None:
        run.update(stage="cache", cache=ImageCount(done=done, total=total), fraction=done / max(total, 1))
        if run.should_cancel():
            raise Cancelled("Cancelled while preparing the image cache.")

    return progress


def _cached(
    run: JobRun, images: list[tuple[int, str]], size: int
) -> tuple[ImageCache, list[int], np.ndarray, int]:
    """(the cache, the ids of the images it holds, their cache rows, how many files were unreadable)."""
    cache = build_cache({path: path for _, path in images}, registry_cache_folder(size), size,
                        workers=min(8, os.cpu_count() or 1), progress=cache_progress(run))  # fmt: skip
    kept = [(image_id, path) for image_id, path in images if path in cache]
    rows = cache.rows(path for _, path in kept)
    return cache, [image_id for image_id, _ in kept], rows, len(images) - len(kept)


def _predict_here(run: JobRun, model_dir: Path, cache: ImageCache, rows: np.ndarray, text: str) -> np.ndarray:
    device = None if run.settings.device == "auto" else run.settings.device
    predictor = Predictor.from_path(model_dir, backend=run.settings.eval_backend, device=device)

    def on_batch(done: int) -> None:
        count = ImageCount(done=done, total=len(rows))
        run.update(stage="predict", stage_text=text, fraction=done / max(len(rows), 1), predicted=count)

    probabilities = predict_rows(predictor, cache, rows, on_batch, run.should_cancel)
    if run.should_cancel():
        raise Cancelled("Cancelled before the predictions were stored; nothing was written.")
    return probabilities


def _predict_sharded(
    run: JobRun, model_dir: Path, cache: ImageCache, rows: np.ndarray, text: str, folder_name: str
) -> np.ndarray:
    torchrun.check_gpus(run)
    folder = run_folder(folder_name)
    out_dir = folder / "shards"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    spec = ShardSpec(str(model_dir), str(cache.cache_dir), [int(r) for r in rows], run.settings.eval_backend,
                     run.device_kind, str(out_dir))  # fmt: skip
    spec.write(folder / "predict-spec.json")
    nproc = run.settings.nproc

    def relay() -> None:
        done = 0
        for rank in range(nproc):
            try:
                done += int(shard_files(out_dir, rank)[1].read_text() or 0)
            except (OSError, ValueError):
                pass
        count = ImageCount(done=done, total=len(rows))
        run.update(stage="predict", stage_text=text, fraction=done / max(len(rows), 1), predicted=count)

    run.message(f"Starting {nproc} prediction processes with torchrun.")
    log_path = folder / "predict-torchrun.log"
    status = torchrun.launch(run, "jobs.predict_shards", [str(folder / "predict-spec.json")], log_path, relay,
                             lambda: Cancelled("Cancelled before the predictions were stored."))  # fmt: skip
    if status != 0:
        tail = torchrun.last_log_line(log_path)
        ended = f"torchrun exited with status {status}{': ' + tail if tail else ''} (log: {log_path})."
        raise PredictionError(f"The prediction processes failed: {ended}")
    return merge_shards(out_dir, len(rows), nproc)


def run_predict(run: JobRun, job: TrainingJob) -> None:
    params = PredictParams.from_dict(job.params)
    with session_scope(run.engine, read_only=True) as session:
        version = version_or_active(session, params.version_id)
        # A missing or unreadable folder fails the job with the registry's sentence naming the version.
        model_dir = registry.usable_model_dir(version)
        images = images_with_files(session)
        version_id, name = version.id, version.name
    run.update(version=name, force=True)
    artifact = read_artifact(model_dir)
    size = artifact.resize
    cache, ids, rows, unreadable = _cached(run, images, size)
    text = f"Predicting with {name}"
    run.update(stage="predict", stage_text=text, fraction=0.0, force=True)
    started = time.perf_counter()
    if run.settings.nproc > 1 and len(rows) > 0:
        probabilities = _predict_sharded(run, model_dir, cache, rows, text, f"predict-{job.id}")
    else:
        probabilities = _predict_here(run, model_dir, cache, rows, text)
    seconds = time.perf_counter() - started
    labels = artifact.labels
    count = ImageCount(done=len(ids), total=len(ids), unreadable=unreadable)
    for start in range(0, len(ids), WRITE_EVERY):
        part = slice(start, start + WRITE_EVERY)
        chunk = {
            image_id: dict(zip(labels, map(float, values), strict=True))
            for image_id, values in zip(ids[part], probabilities[part], strict=True)
        }
        with session_scope(run.engine) as session:
            count.stored += registry.save_predictions(session, version_id, chunk)
        run.update(stage="predict", stage_text="Storing predictions", predicted=count)
    rate = len(ids) / seconds if seconds > 0 and ids else 0.0
    processes = f"{run.settings.nproc} processes" if run.settings.nproc > 1 else "1 process"
    with session_scope(run.engine) as session:
        run.succeed(
            session,
            f"Stored {count.stored:,} predictions of {name!r} ({unreadable:,} unreadable): "
            f"{rate:.1f} images/s on {processes}.",
        )
