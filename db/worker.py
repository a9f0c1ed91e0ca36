"""The training worker: `python -m db.worker` claims queued jobs from the database and runs them.

One job at a time, oldest first. Everything goes through DATABASE_URL and CHEXNET_HOME, so the worker
may run on another machine than the web app (a GPU box with the same database and a shared
CHEXNET_HOME and dataset mount).

Job kinds (db.training_service):
- "fine_tune": core.train.train from a registered version with the labels chosen ("nlp" or
  "effective"), on CUDA when present, else the CPU. Progress (epoch, step, loss history, validation
  AUROC per epoch, ETA, device, images/s) goes into the job row about once a second; a cancel request
  stops it between steps. The result is registered as a new version (parent, label snapshot,
  hyper-parameters) and evaluated on the test and validation splits against the NLP labels and, where
  reviews exist, against the reviewed labels. With CHEXNET_WORKER_GPUS=N > 1 the training runs as
  `torchrun --nproc_per_node=N -m db.train_runner` (DistributedDataParallel, one process per GPU).
- "evaluate": the same evaluation for an existing version (e.g. the demo model, or after more reviews).
- "predict": the active version's probabilities for every imported image, stored in `predictions`
  (the review queue's "model disagrees most" order needs them).

A heartbeat thread keeps the job's `heartbeat_at` fresh even through long steps; a job whose worker
died is marked "interrupted" by the next worker (after `--stale-after` seconds) and can be resumed from
its last finished epoch. Ctrl-C / SIGTERM marks the current job interrupted at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select, update

from core.paths import REPO_ROOT
from db import registry
from db.engine import get_engine, session_scope
from db.errors import DbUserError
from db.jobs import (
    JobLostError,
    claim_next_job,
    finish_job,
    get_job,
    heartbeat,
    mark_stale_jobs_interrupted,
    update_progress,
)
from db.models import Adjudication, Image, ModelVersion, Review, TrainingJob, User, utcnow
from db.training_service import (
    JOB_EVALUATE,
    JOB_FINE_TUNE,
    JOB_PREDICT,
    FineTuneParams,
    JobParamsError,
    fine_tune_params,
    is_dataset_folder,
    n_reviewed_images,
    run_folder,
    write_labels_table,
)
from db.worker_status import remove_worker_status, write_worker_status

log = logging.getLogger("chexnet.worker")

MAX_LOSS_POINTS = 1_500
MAX_MESSAGES = 30
GPUS_ENV = "CHEXNET_WORKER_GPUS"


@dataclass
class WorkerSettings:
    poll_s: float = 2.0  # sleep between polls of an empty queue
    heartbeat_s: float = 5.0
    stale_after_s: float = 120.0  # a running job without a heartbeat this long is interrupted
    progress_interval_s: float = 1.0  # the job row's progress is written at most this often
    device: str = "auto"  # auto | cpu | cuda
    nproc: int = 1  # processes (GPUs) per training job; > 1 runs torchrun
    eval_backend: str = "auto"  # inference backend of evaluations and predictions (auto | torch | openvino)
    n_boot: int = 1000  # bootstrap resamples for the AUROC confidence intervals
    train_workers: int = 0  # data threads of the trainer (0: automatic)


def describe_device(device: str = "auto", nproc: int = 1) -> tuple[str, str]:
    """(kind, human text) of the device training will use: ("cuda", "NVIDIA H100 ...") or ("cpu", ...)."""
    import torch

    want_cuda = device in ("auto", "", "cuda") or device.startswith("cuda")
    if want_cuda and torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        count = torch.cuda.device_count()
        used = min(nproc, count) if nproc > 1 else 1
        return "cuda", f"{used} x {name}" if used > 1 else name
    text = f"CPU ({torch.get_num_threads()} threads)"
    return "cpu", text + (f" x {nproc} processes" if nproc > 1 else "")


# ----------------------------------------------------------------------------------------------------
# One running job: progress, heartbeats, cancellation


class JobRun:
    """The state of the job being run, written to its row (throttled) and kept alive by heartbeats."""

    def __init__(
        self,
        engine: Engine,
        job: TrainingJob,
        worker_id: str,
        settings: WorkerSettings,
        on_beat: Callable[[], None] | None = None,
    ) -> None:
        self.engine = engine
        self.job_id = job.id
        self.worker_id = worker_id
        self.settings = settings
        self.cancel = threading.Event()
        self.lost = threading.Event()
        self._on_beat = on_beat
        self._last_publish = 0.0
        self._beat_stop = threading.Event()
        self._beat_thread: threading.Thread | None = None
        self.progress: dict[str, Any] = {
            "kind": job.kind,
            "stage": "starting",
            "stage_text": "Starting",
            "fraction": 0.0,
            "loss_history": [],
            "epochs_done": [],
            "messages": [],
            "started_at": utcnow().isoformat(),
        }

    # heartbeats -------------------------------------------------------------------------------------
    def start_heartbeats(self) -> None:
        self._beat_thread = threading.Thread(
            target=self._beat_loop, name=f"heartbeat-{self.job_id}", daemon=True
        )
        self._beat_thread.start()

    def stop_heartbeats(self) -> None:
        self._beat_stop.set()
        if self._beat_thread is not None:
            self._beat_thread.join(timeout=10)

    def _beat_loop(self) -> None:
        while not self._beat_stop.wait(self.settings.heartbeat_s):
            try:
                with session_scope(self.engine) as session:
                    if heartbeat(session, self.job_id, self.worker_id):
                        self.cancel.set()
            except JobLostError as exc:
                log.warning("%s", exc)
                self.lost.set()
                return
            except Exception:  # a database hiccup: the next beat tries again
                log.exception("Heartbeat of job %s failed.", self.job_id)
            if self._on_beat is not None:
                self._on_beat()

    def should_cancel(self) -> bool:
        return self.cancel.is_set() or self.lost.is_set()

    # progress ---------------------------------------------------------------------------------------
    def message(self, text: str) -> None:
        log.info("job %s: %s", self.job_id, text)
        self.progress["message"] = text
        self.progress["messages"] = [*self.progress["messages"], text][-MAX_MESSAGES:]
        self.publish(force=True)

    def update(self, force: bool = False, **fields: Any) -> None:
        self.progress.update(fields)
        self.publish(force)

    def publish(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_publish < self.settings.progress_interval_s:
            return
        self._last_publish = now
        self.progress["updated_at"] = utcnow().isoformat()
        try:
            with session_scope(self.engine) as session:
                if update_progress(session, self.job_id, self.worker_id, self.progress):
                    self.cancel.set()
        except JobLostError as exc:
            log.warning("%s", exc)
            self.lost.set()
        except Exception:
            log.exception("Writing the progress of job %s failed.", self.job_id)

    def on_train_progress(self, event: Any) -> None:
        """A core.train.TrainProgress (or the same fields as a dict, from torchrun ranks)."""
        e = event if isinstance(event, dict) else asdict(event)
        phase = e.get("phase")
        common = {
            k: e.get(k) for k in ("device", "eta_s", "images_per_s", "lr") if e.get(k) not in (None, "")
        }
        if phase == "cache":
            total = e.get("total") or 0
            self.update(
                stage="cache",
                stage_text="Preparing the image cache",
                cache={"done": e.get("done", 0), "total": total},
                force=total > 0 and e.get("done", 0) >= total,
            )
        elif phase == "train":
            epoch, epochs = int(e.get("epoch") or 1), int(e.get("epochs") or 1)
            step, steps = int(e.get("step") or 0), int(e.get("steps_per_epoch") or 1)
            position = (epoch - 1) + step / max(steps, 1)
            if e.get("loss") is not None:
                self._add_loss_point(position, float(e["loss"]))
            self.update(
                stage="train",
                stage_text="Training",
                epoch=epoch,
                epochs=epochs,
                step=step,
                steps=steps,
                fraction=min(position / max(epochs, 1), 1.0),
                **common,
            )
        elif phase == "validate":
            self.update(stage="validate", stage_text="Validating", epoch=e.get("epoch"), **common)
        elif phase == "epoch":
            epoch, epochs = int(e.get("epoch") or 1), int(e.get("epochs") or 1)
            record = {
                "epoch": epoch,
                "train_loss": e.get("loss"),
                "val_loss": e.get("val_loss"),
                "val_mean_auroc": e.get("val_mean_auroc"),
                "val_auroc": e.get("val_auroc") or {},
            }
            done = [r for r in self.progress["epochs_done"] if r["epoch"] != epoch]
            self.update(
                stage="train",
                stage_text="Training",
                epoch=epoch,
                epochs=epochs,
                step=e.get("step"),
                steps=e.get("steps_per_epoch"),
                fraction=min(epoch / max(epochs, 1), 1.0),
                epochs_done=[*done, record],
                force=True,
                **common,
            )
        elif phase == "done":
            self.update(stage="train", stage_text="Training finished", fraction=1.0, eta_s=0.0, force=True)
            if e.get("message"):
                self.message(e["message"])
        elif e.get("message"):
            self.message(e["message"])

    def _add_loss_point(self, position: float, loss: float) -> None:
        if not math.isfinite(loss):
            return
        points = self.progress["loss_history"]
        points.append([round(position, 4), round(loss, 5)])
        if len(points) > MAX_LOSS_POINTS:  # keep the whole run's shape: drop every other point
            self.progress["loss_history"] = points[::2]

    def seed_from_saved_state(self, state: dict[str, Any], previous: dict[str, Any] | None) -> None:
        """A resumed run starts with the curves of the epochs it continues from."""
        saved_epoch = int(state.get("epoch", 0))
        history = state.get("history") or []
        self.progress["epochs_done"] = [
            {
                "epoch": int(h["epoch"]),
                "train_loss": h.get("train_loss"),
                "val_loss": h.get("val_loss"),
                "val_mean_auroc": h.get("val_mean_auroc"),
                "val_auroc": h.get("val_auroc") or {},
            }
            for h in history
            if int(h.get("epoch", 0)) <= saved_epoch
        ]
        points = (previous or {}).get("loss_history") or []
        self.progress["loss_history"] = [p for p in points if p[0] <= saved_epoch]
        self.progress["resumed_after_epoch"] = saved_epoch


# ----------------------------------------------------------------------------------------------------
# The worker


class Worker:
    def __init__(
        self,
        engine: Engine | str | None = None,
        *,
        worker_id: str | None = None,
        settings: WorkerSettings | None = None,
    ) -> None:
        self.engine = engine if isinstance(engine, Engine) else get_engine(engine)
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.settings = settings or WorkerSettings()
        self.device_kind, self.device_text = describe_device(self.settings.device, self.settings.nproc)
        self.started_at = utcnow().isoformat()
        self._current: JobRun | None = None

    # status file ------------------------------------------------------------------------------------
    def report_status(self, state: str | None = None) -> None:
        current = self._current
        try:
            write_worker_status(
                self.worker_id,
                host=socket.gethostname(),
                pid=os.getpid(),
                device=self.device_text,
                device_kind=self.device_kind,
                nproc=self.settings.nproc,
                state=state or ("running" if current else "idle"),
                job_id=current.job_id if current else None,
                started_at=self.started_at,
            )
        except OSError:
            log.exception("Cannot write the worker status file.")

    # loop -------------------------------------------------------------------------------------------
    def run_once(self) -> int | None:
        """Mark stale jobs interrupted, then claim and run the oldest queued job. Returns its id."""
        with session_scope(self.engine) as session:
            stale = mark_stale_jobs_interrupted(session, self.settings.stale_after_s)
        for job_id in stale:
            log.warning(
                "Job %s lost its worker (no heartbeat for %s s): marked interrupted.",
                job_id,
                self.settings.stale_after_s,
            )
        with session_scope(self.engine) as session:
            job = claim_next_job(session, self.worker_id)
        if job is None:
            self.report_status("idle")
            return None
        self.run_claimed(job)
        return job.id

    def run_forever(self, stop: threading.Event | None = None) -> None:
        stop = stop or threading.Event()
        log.info(
            "Worker %s on %s polling %s", self.worker_id, self.device_text, self.engine.url.render_as_string()
        )
        try:
            while not stop.is_set():
                try:
                    ran = self.run_once()
                except Exception:  # the database went away for a moment: wait and poll again
                    log.exception("Polling the job queue failed.")
                    ran = None
                if ran is None:
                    stop.wait(self.settings.poll_s)
        finally:
            remove_worker_status(self.worker_id)

    def run_claimed(self, job: TrainingJob) -> None:
        run = JobRun(self.engine, job, self.worker_id, self.settings, on_beat=self.report_status)
        self._current = run
        self.report_status("running")
        run.update(device=self.device_text, force=True)
        run.start_heartbeats()
        log.info("Running job %s (%s).", job.id, job.kind)
        try:
            handler = {
                JOB_FINE_TUNE: self._fine_tune,
                JOB_PREDICT: self._predict,
                JOB_EVALUATE: self._evaluate,
            }
            if job.kind not in handler:
                raise JobParamsError(f"Unknown job kind {job.kind!r}.")
            handler[job.kind](run, job)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: leave the job resumable
            self._mark_interrupted(
                run, "The worker was stopped while running this job; resume it to continue."
            )
            raise
        except Exception as exc:  # any failure ends this job only; the worker carries on
            from core.training import TrainingCancelled

            if isinstance(exc, TrainingCancelled) or run.should_cancel():
                self._end_cancelled(run, str(exc) if isinstance(exc, TrainingCancelled) else "")
            else:
                log.exception("Job %s failed.", job.id)
                self._finish(run, "failed", error=_error_sentence(exc))
        finally:
            run.stop_heartbeats()
            self._current = None
            self.report_status("idle")

    # endings ----------------------------------------------------------------------------------------
    def _finish(
        self, run: JobRun, status: str, *, error: str | None = None, version_id: int | None = None
    ) -> None:
        run.stop_heartbeats()  # a last beat after the row is finished would find the job "lost"
        run.progress.update(stage=status, stage_text=status.capitalize(), updated_at=utcnow().isoformat())
        try:
            with session_scope(self.engine) as session:
                finish_job(
                    session,
                    run.job_id,
                    self.worker_id,
                    status,
                    error=error,
                    result_model_version_id=version_id,
                    progress=run.progress,
                )
        except JobLostError as exc:
            log.warning("%s", exc)

    def _end_cancelled(self, run: JobRun, detail: str) -> None:
        if run.lost.is_set():
            return  # another worker declared this job interrupted; its row is not ours any more
        run.progress["message"] = detail or "Cancelled."
        self._finish(run, "cancelled", error=None)

    def _mark_interrupted(self, run: JobRun, reason: str) -> None:
        run.stop_heartbeats()
        run.progress.update(stage="interrupted", stage_text="Interrupted", message=reason)
        try:
            with session_scope(self.engine) as session:
                session.execute(
                    update(TrainingJob)
                    .where(
                        TrainingJob.id == run.job_id,
                        TrainingJob.status == "running",
                        TrainingJob.worker_id == self.worker_id,
                    )
                    .values(status="interrupted", finished_at=utcnow(), error=reason, progress=run.progress)
                    .execution_options(synchronize_session=False)
                )
        except Exception:
            log.exception("Could not mark job %s interrupted.", run.job_id)

    # fine-tune --------------------------------------------------------------------------------------
    def _fine_tune(self, run: JobRun, job: TrainingJob) -> None:
        from core.artifact import read_artifact
        from core.training import TrainConfig, load_train_state

        params = fine_tune_params(job.params or {})
        with session_scope(self.engine) as session:
            base = registry.get_version(session, params.base_version_id) if params.base_version_id else None
            base_id, base_path = (base.id, Path(base.path)) if base else (None, None)
            previous = get_job(session, params.resumed_from).progress if params.resumed_from else None
            if not params.resume and registry_has_name(session, params.name):
                raise JobParamsError(f"A model version named {params.name!r} already exists.")

        if not params.resume and params.out_dir.exists():
            raise JobParamsError(f"The folder {params.out_dir} already exists; choose another version name.")
        image_size = params.image_size
        if image_size is None:
            image_size = int(read_artifact(base_path).input_spec.get("crop", 224)) if base_path else 224
        run.update(stage="labels", stage_text="Preparing the labels", force=True)
        snapshot = self._labels_for(run, params)
        config = TrainConfig(
            data_dir=params.data_dir,
            out_dir=params.out_dir,
            epochs=params.epochs,
            batch_size=params.batch_size,
            lr=params.lr,
            init="artifact" if base_path else "random",
            base_model=base_path,
            labels_table=params.labels_path if params.label_source == "effective" else None,
            class_weighting=params.class_weighting,
            val_fraction=params.val_fraction,
            seed=params.seed,
            patience=params.patience,
            device=self.settings.device,
            workers=self.settings.train_workers,
            resume=params.resume,
            image_size=image_size,
            name=params.name,
            description=f"Fine-tuned by job #{job.id} with labels: {snapshot['description']}.",
            keep_work=True,  # removed once registered: a worker dying while evaluating can still resume
        )
        if params.resume:
            state = load_train_state(config.work_dir)
            if state is not None:
                run.seed_from_saved_state(state, previous)
                run.message(f"Resuming after epoch {state.get('epoch')} (job #{params.resumed_from}).")

        artifact = self._train(run, config)
        run.update(stage="evaluate", stage_text="Evaluating", fraction=1.0, force=True)
        metrics = self.evaluate_model(run, artifact.path, params.data_dir)
        metrics["training"] = (artifact.card.get("metrics") or {}).get("val")
        metrics["history"] = artifact.card.get("history")
        _write_card_metrics(artifact.path, metrics)
        shutil.copyfile(params.labels_path, Path(artifact.path) / "training_labels.csv")

        from core.training import config_dict

        hyperparams = {
            **config_dict(config),
            **(artifact.card.get("provenance") or {}).get("hyperparameters", {}),
            "job_id": job.id,
            "device": self.device_text,
            "nproc": self.settings.nproc,
        }
        run.stop_heartbeats()
        with session_scope(self.engine) as session:
            creator = session.get(User, job.created_by_id) if job.created_by_id else None
            version = registry.register_model_version(
                session,
                params.name,
                str(Path(artifact.path).resolve()),
                parent_id=base_id,
                label_snapshot=snapshot,
                hyperparams=_jsonable(hyperparams),
                metrics=metrics,
                notes=artifact.card.get("description", ""),
                created_by=creator,
            )
            session.flush()
            run.progress.update(result_version=params.name, message=f"Registered version {params.name!r}.")
            run.progress.update(stage="succeeded", stage_text="Succeeded", updated_at=utcnow().isoformat())
            finish_job(
                session,
                run.job_id,
                self.worker_id,
                "succeeded",
                result_model_version_id=version.id,
                progress=run.progress,
            )
        shutil.rmtree(config.work_dir, ignore_errors=True)
        log.info("Job %s registered version %r.", job.id, params.name)

    def _labels_for(self, run: JobRun, params: FineTuneParams) -> dict[str, Any]:
        """The labels table of the run (written once; a resumed run reuses the original one)."""
        snapshot_path = params.labels_path.with_suffix(".json")
        if params.resume and params.labels_path.is_file() and snapshot_path.is_file():
            return json.loads(snapshot_path.read_text())
        with session_scope(self.engine, read_only=True) as session:
            snapshot = write_labels_table(session, params.label_source, params.data_dir, params.labels_path)
        snapshot["taken_at"] = utcnow().isoformat()
        snapshot_path.write_text(json.dumps(snapshot, indent=2))
        run.message(
            f"Labels: {snapshot['description']}; {snapshot['n_images']:,} images, "
            f"{snapshot['n_reviewed']:,} reviewed, {snapshot['n_excluded']:,} excluded."
        )
        return snapshot

    def _train(self, run: JobRun, config: Any) -> Any:
        from core.training import train

        if self.settings.nproc > 1:
            return self._train_with_torchrun(run, config)
        return train(config, progress=run.on_train_progress, should_cancel=run.should_cancel)

    def _train_with_torchrun(self, run: JobRun, config: Any) -> Any:
        """Several processes (one per GPU) under torchrun; rank 0 writes its progress events to a file."""
        from core.artifact import read_artifact
        from core.training import TrainingCancelled, TrainingError, config_dict

        if self.device_kind == "cuda":
            import torch

            if torch.cuda.device_count() < self.settings.nproc:
                count = torch.cuda.device_count()
                raise TrainingError(f"{GPUS_ENV}={self.settings.nproc} but this machine has {count} GPU(s).")
        folder = run_folder(config.model_name)
        config_path, events_path, log_path = (
            folder / "config.json",
            folder / "events.jsonl",
            folder / "torchrun.log",
        )
        config_path.write_text(json.dumps(config_dict(config)))
        events_path.write_text("")
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={self.settings.nproc}",
            "-m",
            "db.train_runner",
            str(config_path),
            str(events_path),
        ]
        run.message(f"Starting {self.settings.nproc} training processes with torchrun.")
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(
                command,
                cwd=REPO_ROOT,
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        error = None
        offset = 0
        try:
            while True:
                finished = process.poll() is not None
                with open(events_path, "rb") as events:
                    events.seek(offset)
                    chunk = events.read()
                complete = chunk[: chunk.rfind(b"\n") + 1]
                offset += len(complete)
                for line in complete.splitlines():
                    event = json.loads(line)
                    if event.get("phase") == "error":
                        error = event.get("message")
                    else:
                        run.on_train_progress(event)
                if finished:
                    break
                if run.should_cancel():
                    _stop_process_group(process)
                    raise TrainingCancelled(
                        "Training was cancelled; the last finished epoch is saved and can be resumed."
                    )
                time.sleep(0.5)
        except BaseException:
            _stop_process_group(process)
            raise
        if process.returncode != 0:
            tail = (
                log_path.read_text(errors="replace").strip().splitlines()[-1:] if log_path.is_file() else []
            )
            raise TrainingError(
                error
                or f"torchrun exited with status {process.returncode}"
                f"{': ' + tail[0] if tail else ''} (log: {log_path})."
            )
        return read_artifact(config.out_dir)

    # evaluation -------------------------------------------------------------------------------------
    def evaluate_model(self, run: JobRun, model_dir: Path, data_dir: Path) -> dict[str, Any]:
        """Test and validation reports against the NLP labels and, where reviews exist, the reviewed ones.

        A split without any reviewed image has the same labels either way: its "reviewed" report is the
        NLP one (marked `n_reviewed_in_split: 0`) instead of a second pass over the same images.
        """
        from core.artifact import read_artifact
        from core.dataset import DatasetError, load_chestxray14
        from core.evaluate import EvaluationError, evaluate, split_images
        from core.training import TrainingCancelled
        from db.export import export_labels_dataframe

        reviewed_table: Path | None = None
        reviewed_in_split: dict[str, int] = {}
        with session_scope(self.engine, read_only=True) as session:
            if n_reviewed_images(session):
                reviewed_table = run_folder(f"eval-job{run.job_id}") / "reviewed-labels.csv"
                export_labels_dataframe(session, "trainer").to_csv(reviewed_table, index=False)
                reviewed = _reviewed_image_indexes(session)
        if reviewed_table is not None:
            try:
                ds = load_chestxray14(data_dir)
                card = read_artifact(model_dir).card
                for split in ("test", "val"):
                    reviewed_in_split[split] = len(reviewed.intersection(split_images(ds, split, card)[0]))
            except (DatasetError, EvaluationError):
                pass  # the NLP evaluation below reports the problem
        plans = [("nlp", None, split) for split in ("test", "val")]
        plans += [
            ("reviewed", reviewed_table, split) for split in ("test", "val") if reviewed_in_split.get(split)
        ]
        evaluations: dict[str, dict[str, Any]] = {}
        errors: list[str] = []
        for number, (labels, table, split) in enumerate(plans, start=1):
            if run.should_cancel():
                raise TrainingCancelled("The evaluation was cancelled.")
            against = "NLP" if labels == "nlp" else "reviewed"
            text = f"Evaluating on the {split} split against {against} labels ({number}/{len(plans)})"

            def progress(done: int, total: int, number: int = number, text: str = text) -> None:
                part = {"done": done, "total": total, "part": number, "parts": len(plans)}
                run.update(stage="evaluate", stage_text=text, evaluation=part)

            progress(0, 0)
            try:
                report = evaluate(
                    model_dir,
                    data_dir,
                    split,
                    labels_table=table,
                    progress=progress,
                    n_boot=self.settings.n_boot,
                    backend=self.settings.eval_backend,
                )
            except EvaluationError as exc:
                errors.append(f"{split} split, {against} labels: {exc}")
                continue
            if labels == "reviewed":
                report["n_reviewed_in_split"] = reviewed_in_split[split]
            evaluations.setdefault(labels, {})[split] = _compact(report)
        if reviewed_table is not None:
            for split, report in (evaluations.get("nlp") or {}).items():
                if not reviewed_in_split.get(split) and split in reviewed_in_split:
                    same = {**report, "n_reviewed_in_split": 0}
                    same["labels_source"] = "reviewed labels (no reviewed image in this split: same as NLP)"
                    evaluations.setdefault("reviewed", {})[split] = same
        if errors:
            run.message("Some evaluations could not run: " + " ".join(errors))
        return {
            "evaluations": evaluations,
            "evaluation_errors": errors,
            "evaluated_at": utcnow().isoformat(),
            "evaluated_on": str(data_dir),
        }

    def _evaluate(self, run: JobRun, job: TrainingJob) -> None:
        params = job.params or {}
        data_dir = Path(str(params.get("data_dir") or ""))
        if not is_dataset_folder(data_dir):
            raise JobParamsError(f"The dataset folder {str(data_dir)!r} is not a ChestX-ray14 folder.")
        with session_scope(self.engine) as session:
            version = registry.get_version(session, int(params["version_id"]))
            model_dir, name = Path(version.path), version.name
        run.update(stage="evaluate", stage_text="Evaluating", version=name, force=True)
        metrics = self.evaluate_model(run, model_dir, data_dir)
        run.stop_heartbeats()
        with session_scope(self.engine) as session:
            version = registry.get_version(session, int(params["version_id"]))
            version.metrics = {**(version.metrics or {}), **metrics}
            run.progress.update(
                stage="succeeded",
                stage_text="Succeeded",
                fraction=1.0,
                message=f"Evaluated {name!r}; its curves are on the Models & ROC page.",
                updated_at=utcnow().isoformat(),
            )
            finish_job(session, run.job_id, self.worker_id, "succeeded", progress=run.progress)

    # predictions ------------------------------------------------------------------------------------
    def _predict(self, run: JobRun, job: TrainingJob) -> None:
        from core.evaluate import _read_images
        from core.predictor import Predictor
        from core.training import TrainingCancelled

        with session_scope(self.engine, read_only=True) as session:
            version_id = (job.params or {}).get("version_id")
            version = registry.get_version(session, int(version_id)) if version_id else None
            version = version or registry.get_active_version(session)
            if version is None:
                raise JobParamsError("No model version is active; promote one first.")
            images = session.execute(
                select(Image.id, Image.path).where(Image.path.is_not(None)).order_by(Image.id)
            ).all()
            version_id, name, model_dir = version.id, version.name, version.path
        device = None if self.settings.device == "auto" else self.settings.device
        predictor = Predictor.from_path(model_dir, backend=self.settings.eval_backend, device=device)
        run.update(stage="predict", stage_text=f"Predicting with {name}", version=name, force=True)
        batch, stored, unreadable = 32, 0, 0
        pending: dict[int, dict[str, float]] = {}
        pixels_iter = _read_images([path for _, path in images])
        try:
            for start in range(0, len(images), batch):
                if run.should_cancel():
                    raise TrainingCancelled(f"Cancelled after {stored:,} of {len(images):,} images.")
                ids, pixels = [], []
                for image_id, _ in images[start : start + batch]:
                    item = next(pixels_iter)
                    if isinstance(item, str):
                        unreadable += 1
                    else:
                        ids.append(image_id)
                        pixels.append(item)
                for image_id, prediction in zip(
                    ids, predictor.predict(pixels, batch_size=batch), strict=True
                ):
                    pending[image_id] = prediction.probabilities
                done = min(start + batch, len(images))
                if len(pending) >= 512 or done == len(images):
                    with session_scope(self.engine) as session:
                        stored += registry.save_predictions(session, version_id, pending)
                    pending = {}
                run.update(
                    stage="predict",
                    stage_text=f"Predicting with {name}",
                    fraction=done / max(len(images), 1),
                    predicted={
                        "done": done,
                        "total": len(images),
                        "stored": stored,
                        "unreadable": unreadable,
                    },
                )
        finally:
            pixels_iter.close()
        run.stop_heartbeats()
        with session_scope(self.engine) as session:
            run.progress.update(
                stage="succeeded",
                stage_text="Succeeded",
                fraction=1.0,
                message=f"Stored {stored:,} predictions of {name!r} ({unreadable:,} unreadable).",
                updated_at=utcnow().isoformat(),
            )
            finish_job(session, run.job_id, self.worker_id, "succeeded", progress=run.progress)


# ----------------------------------------------------------------------------------------------------
# Helpers


def registry_has_name(session: Any, name: str) -> bool:
    return session.scalar(select(ModelVersion.id).where(ModelVersion.name == name)) is not None


def _reviewed_image_indexes(session: Any) -> set[str]:
    """NIH names of the images with a review or an adjudication."""
    reviewed = select(Review.image_id).union(select(Adjudication.image_id)).subquery()
    return set(session.scalars(select(Image.image_index).where(Image.id.in_(select(reviewed.c.image_id)))))


def _round(value: Any, digits: int = 5) -> Any:
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: _round(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [_round(v, digits) for v in value]
    return value


def _compact(report: dict[str, Any]) -> dict[str, Any]:
    """A report small enough for the version row: floats rounded, no per-image lists."""
    return _round({k: v for k, v in report.items() if k not in ("image_ids", "per_image")})


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _write_card_metrics(model_dir: str | Path, metrics: dict[str, Any]) -> None:
    """The compact test figures go into the model card too, so the Predict page shows a measured AUROC."""
    from core.artifact import read_artifact, update_card
    from core.evaluate import card_metrics_entry

    card_metrics = dict(read_artifact(model_dir).card.get("metrics") or {})
    # Only the test split: the card's "val" entry is the trainer's own (best epoch, from the cache).
    for labels, reports in (metrics.get("evaluations") or {}).items():
        if "test" in reports:
            key = "test" if labels == "nlp" else "test_reviewed_labels"
            card_metrics[key] = card_metrics_entry(reports["test"])
    update_card(model_dir, metrics=card_metrics)


def _error_sentence(exc: BaseException) -> str:
    """The user-facing text of a failure: our own errors are sentences; others get their type name."""
    from core.evaluate import EvaluationError
    from core.training import TrainingError

    if isinstance(exc, DbUserError | TrainingError | EvaluationError):
        return str(exc)
    text = str(exc).strip() or "no details"
    return f"{type(exc).__name__}: {text}"


def _stop_process_group(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=30)


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m db.worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--once", action="store_true", help="run at most one queued job, then exit")
    parser.add_argument(
        "--database-url", help="default: $DATABASE_URL, else the SQLite file in $CHEXNET_HOME"
    )
    parser.add_argument(
        "--device",
        default=os.environ.get("CHEXNET_WORKER_DEVICE", "auto"),
        help="auto (CUDA when present) | cuda | cpu",
    )
    parser.add_argument(
        "--gpus",
        type=int,
        default=int(os.environ.get(GPUS_ENV, "1") or 1),
        help=f"processes per training job, one per GPU (torchrun when > 1; env {GPUS_ENV})",
    )
    parser.add_argument("--poll", type=float, default=2.0, help="seconds between polls of an empty queue")
    parser.add_argument(
        "--stale-after",
        type=float,
        default=120.0,
        help="seconds without a heartbeat after which a running job is marked interrupted",
    )
    parser.add_argument("--heartbeat", type=float, default=5.0, help="seconds between heartbeats")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of the AUROC CIs")
    parser.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "torch", "openvino"],
        help="inference backend of evaluations and predictions",
    )
    parser.add_argument("--worker-id", help="default: HOST:PID")
    parser.add_argument(
        "--register",
        metavar="MODEL_DIR",
        help="register a model folder made outside the app (e.g. by `torchrun ... -m core train`) as a new "
        "version, then exit",
    )
    return parser


def register_folder(model_dir: str, url: str | None) -> int:
    """`--register DIR`: one sentence on success or failure."""
    from core.artifact import ArtifactError
    from db.training_service import register_existing_model

    try:
        with session_scope(get_engine(url)) as session:
            version = register_existing_model(session, Path(model_dir).expanduser())
            print(f"Registered {version.name!r} (version id {version.id}) from {version.path}.", flush=True)
    except (ArtifactError, DbUserError) as exc:
        print(f"Cannot register {model_dir}: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(levelname)s %(message)s")
    if args.register:
        return register_folder(args.register, args.database_url)
    settings = WorkerSettings(
        poll_s=args.poll,
        heartbeat_s=args.heartbeat,
        stale_after_s=args.stale_after,
        device=args.device,
        nproc=max(1, args.gpus),
        eval_backend=args.backend,
        n_boot=args.n_boot,
    )
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    worker = Worker(args.database_url, worker_id=args.worker_id, settings=settings)
    try:
        if args.once:
            job_id = worker.run_once()
            remove_worker_status(worker.worker_id)
            print(f"Ran job {job_id}." if job_id is not None else "No job was queued.", flush=True)
        else:
            worker.run_forever()
    except KeyboardInterrupt:
        log.info("Worker %s stopped.", worker.worker_id)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
