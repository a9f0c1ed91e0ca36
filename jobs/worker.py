"""The training worker: claims queued jobs from the database, oldest first, and runs them one at a time.

Everything goes through DATABASE_URL and CHEXNET_HOME, so the worker may run on another machine than
the web app (a GPU box with the same database, a shared CHEXNET_HOME and the same dataset mount).

Each job kind has a handler (`HANDLERS`: fine_tune, evaluate, predict); the worker owns the endings:
a handler that returns has finished its job "succeeded"; a `core.errors.Cancelled` (or a cancel
request) ends it "cancelled"; a `UserError` ends it "failed" with its sentence; anything else "failed"
with "Unexpected error (TypeName): ..." and a logged traceback. The worker then carries on. A job whose
worker died is marked "interrupted" by the next worker to poll (after `stale_after_s` without a
heartbeat); Ctrl-C / SIGTERM marks the current job interrupted at once. Both can be resumed.
Between jobs it converts a newly served model for the web app's OpenVINO cache (jobs.serving), and each
poll first queues the PACS screenings that are due (jobs.pacs_screen: per connection, off by default).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from core.devices import describe_worker_device
from core.errors import Cancelled, UserError
from db.engine import get_engine, session_scope
from db.jobs import claim_next_job, mark_stale_jobs_interrupted
from db.models import TrainingJob, utcnow
from jobs.evaluate import run_evaluate
from jobs.fine_tune import run_fine_tune
from jobs.pacs_import import JOB_PACS_IMPORT, run_pacs_import
from jobs.pacs_label_write_back import JOB_PACS_LABEL_WRITE_BACK, run_pacs_label_write_back
from jobs.pacs_screen import JOB_PACS_SCREEN, enqueue_due_screens, run_pacs_screen
from jobs.pacs_write_back import JOB_PACS_WRITE_BACK, run_pacs_write_back
from jobs.params import JOB_EVALUATE, JOB_FINE_TUNE, JOB_PREDICT, JobParamsError
from jobs.predict import run_predict
from jobs.run import JobRun, WorkerSettings
from jobs.screen import JOB_SCREEN, run_screen
from jobs.serving import ServingPreparer
from jobs.worker_status import remove_worker_status, write_worker_status

__all__ = ["HANDLERS", "Worker", "WorkerSettings", "error_sentence"]

log = logging.getLogger("chexnet.worker")

Handler = Callable[[JobRun, TrainingJob], None]
HANDLERS: dict[str, Handler] = {
    JOB_FINE_TUNE: run_fine_tune,
    JOB_EVALUATE: run_evaluate,
    JOB_PREDICT: run_predict,
    JOB_SCREEN: run_screen,
    JOB_PACS_IMPORT: run_pacs_import,
    JOB_PACS_WRITE_BACK: run_pacs_write_back,
    JOB_PACS_LABEL_WRITE_BACK: run_pacs_label_write_back,
    JOB_PACS_SCREEN: run_pacs_screen,
}
INTERRUPTED_REASON = "The worker was stopped while running this job; resume it to continue."


def error_sentence(exc: BaseException) -> str:
    """What a failed job row says: a UserError's own sentence, else the type of the unexpected error."""
    if isinstance(exc, UserError):
        return str(exc)
    return f"Unexpected error ({type(exc).__name__}): {str(exc).strip() or 'no details'}"


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
        self.device_kind, self.device_text = describe_worker_device(self.settings.device, self.settings.nproc)
        self.started_at = utcnow().isoformat()
        self._current: JobRun | None = None
        self._database_down = False
        self._serving = ServingPreparer(self.engine)

    def report_status(self, state: str | None = None) -> None:
        """Rewrite this worker's status file (what the Fine-tune page says about the workers)."""
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

    # the loop ---------------------------------------------------------------------------------------
    def run_once(self) -> int | None:
        """Mark stale jobs interrupted, queue the due PACS screenings, then claim and run the oldest queued
        job. Returns its id."""
        with session_scope(self.engine) as session:
            stale = mark_stale_jobs_interrupted(session, self.settings.stale_after_s)
        for job_id in stale:
            log.warning(
                "Job %s lost its worker (no heartbeat for %s s): marked interrupted.",
                job_id,
                self.settings.stale_after_s,
            )
        self.queue_due_screens()
        with session_scope(self.engine) as session:
            job = claim_next_job(session, self.worker_id)
        if job is None:
            self.report_status("idle")
            return None
        self.run_claimed(job)
        return job.id

    def queue_due_screens(self) -> list[int]:
        """A pacs_screen job for each PACS connection whose poll is due (one query when none is)."""
        try:
            queued = enqueue_due_screens(self.engine)
        except OperationalError:
            raise
        except Exception:  # a bug here must not stop the queue: say so and run the jobs
            log.exception("Queueing the due PACS screenings failed.")
            return []
        for job_id in queued:
            log.info("Queued job %s: screening a PACS for new studies.", job_id)
        return queued

    def poll(self) -> int | None:
        """`run_once`, saying in one log line (no traceback) when the database goes away and comes back."""
        try:
            ran = self.run_once()
        except OperationalError as exc:
            if not self._database_down:
                detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
                log.warning("The database is unreachable (%s); polling again until it is back.", detail)
                self._database_down = True
            return None
        if self._database_down:
            log.info("The database is reachable again.")
            self._database_down = False
        return ran

    def run_forever(self, stop: threading.Event | None = None) -> None:
        stop = stop or threading.Event()
        log.info(
            "Worker %s on %s polling %s",
            self.worker_id,
            self.device_text,
            self.engine.url.render_as_string(hide_password=True),
        )
        try:
            while not stop.is_set():
                try:
                    ran = self.poll()
                    if ran is None and not self._database_down:  # idle: ready a new served model
                        self._serving.prepare_if_new()
                except Exception:  # a bug in polling: say so, wait, and poll again
                    log.exception("Polling the job queue failed.")
                    ran = None
                if ran is None:
                    stop.wait(self.settings.poll_s)
        finally:
            remove_worker_status(self.worker_id)

    # one job ----------------------------------------------------------------------------------------
    def run_claimed(self, job: TrainingJob) -> None:
        run = JobRun(
            self.engine,
            job,
            self.worker_id,
            self.settings,
            device_kind=self.device_kind,
            device_text=self.device_text,
            on_beat=self.report_status,
        )
        self._current = run
        self.report_status("running")
        run.publish(force=True)
        run.start_heartbeats()
        log.info("Running job %s (%s).", job.id, job.kind)
        try:
            handler = HANDLERS.get(job.kind)
            if handler is None:
                raise JobParamsError(f"Unknown job kind {job.kind!r}.")
            handler(run, job)
            if not run.ended:
                raise RuntimeError(f"the {job.kind} handler returned without ending job {job.id}")
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: leave the job resumable
            run.interrupt(INTERRUPTED_REASON)
            raise
        except Exception as exc:  # any failure ends this job only; the worker carries on
            self._end_with(run, exc)
        finally:
            run.stop_heartbeats()
            self._current = None
            self.report_status("idle")

    def _end_with(self, run: JobRun, exc: Exception) -> None:
        if isinstance(exc, Cancelled) or run.should_cancel():
            if run.lost.is_set():
                return  # another worker declared this job interrupted; its row is not ours any more
            detail = str(exc) if isinstance(exc, Cancelled) else ""
            run.finish("cancelled", message=detail or "Cancelled.")
            return
        if isinstance(exc, UserError):
            log.warning("Job %s failed: %s", run.job_id, exc)
        else:
            log.exception("Job %s failed on an unexpected error.", run.job_id)
        run.finish("failed", error=error_sentence(exc))
