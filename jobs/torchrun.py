"""Jobs over several processes (one per GPU) with torchrun: `launch` starts `torchrun --standalone
--nproc_per_node=N -m MODULE ...` and follows it; a fine-tune runs `jobs.train_runner CONFIG EVENTS`
through it when the worker has more than one GPU per job (predictions: jobs.predict_shards).

CONFIG is the run's `TrainConfig.to_json()`; rank 0 appends each progress event to EVENTS as one JSON
line (and a last {"phase": "error", "message": ...} when training fails), which is relayed here to the
job row. Cancelling terminates the process group: the last finished epoch stays saved and resumable.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from core.inference.artifact import ModelArtifact, read_artifact
from core.paths import REPO_ROOT
from core.settings import CHEXNET_WORKER_GPUS, subprocess_env
from core.training import TrainConfig, TrainingCancelled, TrainingError
from jobs.folders import run_folder
from jobs.run import JobRun

POLL_S = 0.5


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


def check_gpus(run: JobRun) -> None:
    if run.device_kind != "cuda":
        return
    import torch

    count = torch.cuda.device_count()
    if count < run.settings.nproc:
        raise TrainingError(
            f"{CHEXNET_WORKER_GPUS.name}={run.settings.nproc} but this machine has {count} GPU(s)."
        )


class _EventRelay:
    """Reads the complete lines rank 0 appended since the last call and hands them to the job."""

    def __init__(self, run: JobRun, path: Path) -> None:
        self.run, self.path, self.offset = run, path, 0
        self.error: str | None = None

    def relay(self) -> None:
        with open(self.path, "rb") as events:
            events.seek(self.offset)
            chunk = events.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        for line in complete.splitlines():
            event = json.loads(line)
            if event.get("phase") == "error":
                self.error = event.get("message")
            else:
                self.run.on_train_progress(event)


def launch(
    run: JobRun,
    module: str,
    args: list[str],
    log_path: Path,
    on_poll: Callable[[], None],
    cancelled: Callable[[], BaseException],
) -> int:
    """Run `torchrun --standalone --nproc_per_node=<run.settings.nproc> -m MODULE ARGS` in its own process
    group, calling `on_poll` every POLL_S (and once after the exit); on a cancel request the group is
    terminated and `cancelled()` raised. Returns torchrun's exit status."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={run.settings.nproc}", "-m", module, *args]  # fmt: skip
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=subprocess_env(),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, terminated as a whole on cancel
        )
    try:
        while True:
            finished = process.poll() is not None
            on_poll()
            if finished:
                return process.returncode
            if run.should_cancel():
                _stop_process_group(process)
                raise cancelled()
            time.sleep(POLL_S)
    except BaseException:
        _stop_process_group(process)
        raise


def last_log_line(log_path: Path) -> str:
    lines = log_path.read_text(errors="replace").strip().splitlines() if log_path.is_file() else []
    return lines[-1] if lines else ""


def train_with_torchrun(run: JobRun, config: TrainConfig) -> ModelArtifact:
    """Train `config` in `run.settings.nproc` processes; returns the artifact rank 0 wrote."""
    check_gpus(run)
    folder = run_folder(config.model_name)
    config_path, events_path, log_path = (
        folder / "config.json",
        folder / "events.jsonl",
        folder / "torchrun.log",
    )
    config_path.write_text(config.to_json())
    events_path.write_text("")
    run.message(f"Starting {run.settings.nproc} training processes with torchrun.")
    relay = _EventRelay(run, events_path)
    status = launch(
        run,
        "jobs.train_runner",
        [str(config_path), str(events_path)],
        log_path,
        relay.relay,
        lambda: TrainingCancelled(
            "Training was cancelled; the last finished epoch is saved and can be resumed."
        ),
    )
    if status != 0:
        tail = last_log_line(log_path)
        raise TrainingError(
            relay.error
            or f"torchrun exited with status {status}{': ' + tail if tail else ''} (log: {log_path})."
        )
    return read_artifact(config.out_dir)
