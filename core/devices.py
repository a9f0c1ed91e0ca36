"""Which torch device a run uses and how it is described to a person ("NVIDIA H100 80GB HBM3", "CPU (2
threads)"). Shared by training, its benchmark and the worker; torch is imported on first use so that
importing this module (e.g. for a CLI's --help) stays instant."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import UserError

if TYPE_CHECKING:
    import torch

    from core.distributed import DistInfo


# Device nodes of the GPU drivers PyTorch can use (NVIDIA, AMD ROCm, WSL's GPU paravirtualisation).
_GPU_DRIVER_NODES = ("/dev/nvidiactl", "/dev/kfd", "/dev/dxg")


def cuda_available() -> bool:
    """`torch.cuda.is_available()`, answered without importing torch (~2.5 s) on a machine that has no
    GPU driver at all."""
    if "torch" not in sys.modules and not any(Path(node).exists() for node in _GPU_DRIVER_NODES):
        return False
    import torch

    return torch.cuda.is_available()


class DeviceError(UserError, RuntimeError):
    """The device asked for cannot be used (one human sentence)."""


def resolve_device(name: str | None, info: DistInfo | None = None) -> torch.device:
    """The device `name` ("auto", "cpu", "cuda", "cuda:N") means here; under torchrun a CUDA run uses
    this rank's GPU (cuda:LOCAL_RANK)."""
    import torch

    from core.distributed import DistInfo

    info = info or DistInfo()
    if name in ("auto", "", None):
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise DeviceError(f"Unknown device {name!r}: use auto, cpu, cuda or cuda:N.") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("CUDA was asked for but no GPU is available; use --device cpu.")
        if info.enabled:
            device = torch.device("cuda", info.local_rank)
        elif device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    elif info.enabled and device.type != "cpu":
        raise DeviceError(f"Multi-process training supports CUDA or CPU, not {device.type}.")
    return device


def device_description(device: torch.device, world_size: int = 1) -> str:
    """The GPU's name (with "N x" for several processes) or "CPU (T threads)"."""
    import torch

    if device.type == "cuda":
        text = torch.cuda.get_device_name(device)
        return f"{world_size} x {text}" if world_size > 1 else text
    threads = torch.get_num_threads()
    return f"CPU ({threads} thread{'s' if threads > 1 else ''})" + (
        f" x {world_size} processes" if world_size > 1 else ""
    )


def describe_worker_device(device: str = "auto", nproc: int = 1) -> tuple[str, str]:
    """(kind, human text) of the device a worker's training will use: ("cuda", "NVIDIA H100 ...") or
    ("cpu", "CPU (2 threads)"), without claiming a GPU (nothing is allocated)."""
    import torch

    want_cuda = device in ("auto", "", "cuda") or device.startswith("cuda")
    if want_cuda and torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        count = torch.cuda.device_count()
        used = min(nproc, count) if nproc > 1 else 1
        return "cuda", f"{used} x {name}" if used > 1 else name
    text = f"CPU ({torch.get_num_threads()} threads)"
    return "cpu", text + (f" x {nproc} processes" if nproc > 1 else "")
