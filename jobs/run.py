"""One running job: its progress (a JobProgress) written to the row at most once a second, a heartbeat
thread that keeps the row alive through long steps, and cancellation (asked for on the page, or the
row lost to another worker)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from db.engine import session_scope
from db.jobs import JobLostError, finish_job, heartbeat, interrupt_job, update_progress
from db.models import TrainingJob, utcnow
from jobs.progress import JobProgress

log = logging.getLogger("chexnet.worker")


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


class JobRun:
    """The job being run by this worker and everything a handler needs to run it."""

    def __init__(
        self,
        engine: Engine,
        job: TrainingJob,
        worker_id: str,
        settings: WorkerSettings,
        *,
        device_kind: str = "cpu",
        device_text: str = "",
        on_beat: Callable[[], None] | None = None,
    ) -> None:
        self.engine = engine
        self.job_id = job.id
        self.kind = job.kind
        self.params: dict[str, Any] = dict(job.params or {})
        self.created_by_id = job.created_by_id
        self.worker_id = worker_id
        self.settings = settings
        self.device_kind = device_kind
        self.device_text = device_text
        self.cancel = threading.Event()
        self.lost = threading.Event()
        self.progress = JobProgress(kind=job.kind, device=device_text, started_at=utcnow().isoformat())
        self.ended = False  # succeed / finish / interrupt wrote the job's end
        self._on_beat = on_beat
        self._last_publish = 0.0
        self._publish_lock = threading.Lock()
        self._beat_stop = threading.Event()
        self._beat_thread: threading.Thread | None = None

    # heartbeats -------------------------------------------------------------------------------------
    def start_heartbeats(self) -> None:
        self._beat_thread = threading.Thread(
            target=self._beat_loop, name=f"heartbeat-{self.job_id}", daemon=True
        )
        self._beat_thread.start()

    def stop_heartbeats(self) -> None:
        """Before the row is finished: a last beat after that would find the job "lost"."""
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
        self.progress.add_message(text)
        self.publish(force=True)

    def update(self, force: bool = False, **fields: Any) -> None:
        for name, value in fields.items():
            if not hasattr(self.progress, name):
                raise AttributeError(f"JobProgress has no field {name!r}")
            setattr(self.progress, name, value)
        self.publish(force)

    def on_train_progress(self, event: Any) -> None:
        """The trainer's progress callback (a TrainProgress, or its fields as a dict from torchrun)."""
        urgent = self.progress.apply_train_event(event)
        self.publish(force=urgent)

    def publish(self, force: bool = False) -> None:
        with self._publish_lock:
            now = time.monotonic()
            if not force and now - self._last_publish < self.settings.progress_interval_s:
                return
            self._last_publish = now
            self.progress.updated_at = utcnow().isoformat()
            values = self.progress.to_dict()
        try:
            with session_scope(self.engine) as session:
                if update_progress(session, self.job_id, self.worker_id, values):
                    self.cancel.set()
        except JobLostError as exc:
            log.warning("%s", exc)
            self.lost.set()
        except Exception:
            log.exception("Writing the progress of job %s failed.", self.job_id)

    # endings ----------------------------------------------------------------------------------------
    def succeed(self, session: Session, message: str, *, result_version_id: int | None = None) -> None:
        """End the job "succeeded" in `session` (the caller's transaction, e.g. with the registration)."""
        self.stop_heartbeats()
        self.progress.end("succeeded", message)
        self.progress.updated_at = utcnow().isoformat()
        finish_job(
            session,
            self.job_id,
            self.worker_id,
            "succeeded",
            result_model_version_id=result_version_id,
            progress=self.progress.to_dict(),
        )
        self.ended = True

    def finish(self, status: str, *, error: str | None = None, message: str | None = None) -> None:
        """End the job "failed" or "cancelled" in a transaction of its own."""
        self.stop_heartbeats()
        self.progress.end(status, message)
        self.progress.updated_at = utcnow().isoformat()
        self.ended = True
        try:
            with session_scope(self.engine) as session:
                finish_job(
                    session,
                    self.job_id,
                    self.worker_id,
                    status,
                    error=error,
                    progress=self.progress.to_dict(),
                )
        except JobLostError as exc:
            log.warning("%s", exc)

    def interrupt(self, reason: str) -> None:
        """The worker is stopping (Ctrl-C, SIGTERM): the job ends "interrupted" and stays resumable."""
        self.stop_heartbeats()
        self.progress.end("interrupted", reason)
        self.ended = True
        try:
            with session_scope(self.engine) as session:
                interrupt_job(session, self.job_id, self.worker_id, reason, progress=self.progress.to_dict())
        except Exception:
            log.exception("Could not mark job %s interrupted.", self.job_id)
