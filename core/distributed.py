"""One training entry for one process or many: `torchrun --nproc_per_node=N -m core train ...`.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK (read through `core.settings.torchrun_ranks`); without them
everything here degrades to a no-op single process, so the same code path runs in tests, on a laptop and
on an 8-GPU node.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from core import settings

# Rank 0 builds the image cache (up to an hour for the full dataset) and runs validation while the
# other ranks wait in a collective: the default 10-minute collective timeout would kill them.
COLLECTIVE_TIMEOUT = timedelta(hours=3)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_dist_info() -> DistInfo:
    """What torchrun asked for (a single process when RANK/WORLD_SIZE are absent)."""
    ranks = settings.torchrun_ranks()
    if ranks is None:
        return DistInfo()
    rank, world_size, local_rank = ranks
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank)


def init_distributed(info: DistInfo, device: torch.device) -> None:
    """Join the process group (NCCL on CUDA, gloo on CPU); each rank owns cuda:LOCAL_RANK."""
    if not info.enabled or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend=backend, timeout=COLLECTIVE_TIMEOUT, device_id=device if device.type == "cuda" else None
    )


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.barrier()


def broadcast_floats(values: list[float], info: DistInfo, device: torch.device) -> list[float]:
    """Rank 0's values on every rank (e.g. validation loss and AUROC for the scheduler and early stopping)."""
    if not info.enabled:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.broadcast(tensor, src=0)
    return tensor.tolist()


def shard_epoch_order(n_items: int, epoch: int, seed: int, info: DistInfo) -> np.ndarray:
    """This rank's share of one epoch's shuffled order (DistributedSampler semantics).

    Every rank draws the same permutation (seed + epoch), pads it by wrapping so it divides evenly, and
    takes every world_size-th item from its rank: all ranks run the same number of steps (DDP needs that)
    and together see every item once per epoch (a few twice when padding was needed).
    """
    order = np.random.default_rng([seed, epoch]).permutation(n_items)
    if not info.enabled:
        return order
    total = -(-n_items // info.world_size) * info.world_size
    if total > n_items:
        order = np.concatenate([order, order[: total - n_items]])
    return order[info.rank :: info.world_size]


def all_reduce_mean(value: float, info: DistInfo, device: torch.device) -> float:
    """The mean of one number over the ranks (e.g. each rank's training loss of an epoch)."""
    if not info.enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return float(tensor.item()) / info.world_size
