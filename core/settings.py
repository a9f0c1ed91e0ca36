"""Every environment variable CheXNet Studio reads, in one place (read at call time, so tests may set them).

The README's "Environment variables" table lists the same names; a test keeps the two in step and
checks that no other module reads `os.environ`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class EnvVar:
    name: str
    default: str
    meaning: str


CHEXNET_HOME = EnvVar(
    "CHEXNET_HOME", "./var", "Folder of all runtime data: database, uploads, caches, models."
)
CHEXNET_MODEL = EnvVar(
    "CHEXNET_MODEL", "", "A model folder that overrides the promoted version (Predict page and CLIs)."
)
DATABASE_URL = EnvVar(
    "DATABASE_URL", "", "SQLAlchemy URL, e.g. postgresql://user:pw@host/db; empty: SQLite under CHEXNET_HOME."
)
CHEXNET_ADMIN_PASSWORD = EnvVar(
    "CHEXNET_ADMIN_PASSWORD", "", "Password of the first `admin` account, used once on an empty database."
)
CHEXNET_WORKER_DEVICE = EnvVar(
    "CHEXNET_WORKER_DEVICE", "auto", "Device of the training worker: auto (CUDA when present), cuda or cpu."
)
CHEXNET_WORKER_GPUS = EnvVar(
    "CHEXNET_WORKER_GPUS", "1", "Processes (GPUs) per fine-tune; above 1 the worker launches torchrun."
)
CHEXNET_BIND = EnvVar(
    "CHEXNET_BIND",
    "127.0.0.1",
    "Address `make run` serves on; 0.0.0.0 opens it to the network (as the Procfile does).",
)
CHEXNET_INFERENCE_BACKEND = EnvVar(
    "CHEXNET_INFERENCE_BACKEND",
    "auto",
    "Backend of the web app's predictions: auto (OpenVINO on CPU when installed), torch or openvino.",
)
CHEXNET_INFERENCE_PRECISION = EnvVar(
    "CHEXNET_INFERENCE_PRECISION",
    "auto",
    "OpenVINO's precision: auto (the fastest of fp32, bf16 where the CPU has it and an accepted INT8 graph, "
    "kept only if clearly faster and within 0.01 of fp32), f32, bf16 or int8.",
)
CHEXNET_UPLOAD_SLOTS = EnvVar(
    "CHEXNET_UPLOAD_SLOTS",
    "2",
    "Uploads the web server decodes and predicts at once; more wait their turn (bounds its memory).",
)
OMP_NUM_THREADS = EnvVar(
    "OMP_NUM_THREADS", "", "Threads of PyTorch and OpenVINO inference and training; empty: every core."
)
# Set by torchrun for each rank; read, never set, by the app.
RANK = EnvVar("RANK", "", "torchrun: this process's rank (set by torchrun, not by hand).")
WORLD_SIZE = EnvVar("WORLD_SIZE", "1", "torchrun: number of processes (set by torchrun).")
LOCAL_RANK = EnvVar(
    "LOCAL_RANK", "0", "torchrun: rank on this machine, i.e. the GPU index (set by torchrun)."
)

ALL = (
    CHEXNET_HOME,
    CHEXNET_MODEL,
    DATABASE_URL,
    CHEXNET_ADMIN_PASSWORD,
    CHEXNET_WORKER_DEVICE,
    CHEXNET_WORKER_GPUS,
    CHEXNET_BIND,
    CHEXNET_INFERENCE_BACKEND,
    CHEXNET_INFERENCE_PRECISION,
    CHEXNET_UPLOAD_SLOTS,
    OMP_NUM_THREADS,
    RANK,
    WORLD_SIZE,
    LOCAL_RANK,
)


def read(var: EnvVar) -> str:
    """The variable's value, stripped; its default when unset or blank."""
    value = os.environ.get(var.name, "").strip()
    return value or var.default


def is_set(var: EnvVar) -> bool:
    return bool(os.environ.get(var.name, "").strip())


def chexnet_home() -> Path:
    if is_set(CHEXNET_HOME):
        return Path(read(CHEXNET_HOME)).expanduser()
    return REPO_ROOT / "var"


def model_override() -> Path | None:
    return Path(read(CHEXNET_MODEL)).expanduser() if is_set(CHEXNET_MODEL) else None


def database_url() -> str | None:
    return read(DATABASE_URL) if is_set(DATABASE_URL) else None


def admin_password() -> str | None:
    return os.environ.get(CHEXNET_ADMIN_PASSWORD.name) or None


def worker_device() -> str:
    return read(CHEXNET_WORKER_DEVICE)


def worker_gpus() -> int:
    try:
        return max(1, int(read(CHEXNET_WORKER_GPUS)))
    except ValueError:
        return 1


def inference_backend() -> str:
    return read(CHEXNET_INFERENCE_BACKEND).strip().lower() or "auto"


def inference_precision() -> str:
    return read(CHEXNET_INFERENCE_PRECISION).lower()


def upload_slots() -> int:
    try:
        return max(1, int(read(CHEXNET_UPLOAD_SLOTS)))
    except ValueError:
        return 2


def compute_threads() -> int:
    """The threads PyTorch starts with: OMP_NUM_THREADS when it is a positive number, else every core
    this process may run on."""
    try:
        threads = int(read(OMP_NUM_THREADS))
    except ValueError:
        threads = 0
    return threads if threads > 0 else len(os.sched_getaffinity(0))


def bind_address() -> str:
    """Where the web server listens under `make run` (scripts/run.sh reads the same variable)."""
    return read(CHEXNET_BIND)


def torchrun_ranks() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) under torchrun with more than one process, else None."""
    if not is_set(RANK):
        return None
    world = int(read(WORLD_SIZE))
    if world <= 1:
        return None
    return int(read(RANK)), world, int(read(LOCAL_RANK))


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a child process of ours (torchrun, a second worker): ours, the repository on
    PYTHONPATH, plus `extra`."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env
