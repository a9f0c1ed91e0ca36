"""What a run saves after every epoch, in its work folder `<out>.work/`, so that it can be resumed.

- `train_state.pt` (`STATE_FILE`): model, optimizer, scheduler, history, best epoch, the settings that
  must not change on resume (the config signature); primitive values and tensors only, so it loads with
  `torch.load(weights_only=True)`.
- `best.safetensors` (`BEST_WEIGHTS_FILE`): the weights of the best epoch so far (the model card's).

Both are written to a temporary name and renamed: a crash mid-write leaves the previous epoch's file.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from core.labels import FINDINGS
from core.training.config import (
    BEST_WEIGHTS_FILE,
    STATE_FILE,
    ProgressCallback,
    TrainConfig,
    TrainingError,
    TrainProgress,
)
from core.training.step import Trainee

STATE_FORMAT = 1


@dataclass
class RunRecord:
    """What a run carries from epoch to epoch (and saves after each one)."""

    epoch: int = 0  # the last finished epoch
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"epoch": 0, "score": None})
    stale_epochs: int = 0  # epochs since the best one
    best_val_logits: np.ndarray | None = None  # validation logits of the best epoch (rank 0)

    def add_epoch(self, entry: dict[str, Any], score: float) -> bool:
        """Record a finished epoch (its history entry, and its score: higher is better); True when it is
        the best so far."""
        improved = self.best.get("score") is None or score > self.best["score"]
        if improved:
            keys = ("epoch", "val_loss", "val_mean_auroc", "val_auroc")
            self.best = {"score": float(score), **{key: entry[key] for key in keys}}
            self.stale_epochs = 0
        else:
            self.stale_epochs += 1
        self.history.append({**entry, "improved": improved})
        self.epoch = entry["epoch"]
        return improved


def config_signature(config: TrainConfig) -> dict[str, Any]:
    """What must not change between a run and its resumption (primitive values: weights_only loads)."""
    return {
        "data_dir": str(config.data_dir.resolve()),
        "image_size": config.image_size,
        "val_fraction": config.settings.val_fraction,
        "seed": config.settings.seed,
        "init": config.init,
        "batch_size": config.settings.batch_size,
        "labels": list(FINDINGS),
    }


def atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}


def save_best_weights(model: nn.Module, work_dir: Path) -> None:
    tmp = work_dir / (BEST_WEIGHTS_FILE + ".tmp")
    save_file(cpu_state(model), str(tmp))
    os.replace(tmp, work_dir / BEST_WEIGHTS_FILE)


def load_best_weights(model: nn.Module, work_dir: Path) -> None:
    """Put the best epoch's weights back into `model` (on its device)."""
    path = work_dir / BEST_WEIGHTS_FILE
    if not path.is_file():
        raise TrainingError(f"The best checkpoint is missing from {work_dir}; train again without --resume.")
    device = next(model.parameters()).device
    model.load_state_dict({k: v.to(device) for k, v in load_file(str(path)).items()})


def save_train_state(
    config: TrainConfig,
    record: RunRecord,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau,
) -> None:
    logits = record.best_val_logits
    atomic_torch_save(
        {
            "format": STATE_FORMAT,
            "signature": config_signature(config),
            "signature_lr": float(config.learning_rate),
            "epoch": record.epoch,
            "model": cpu_state(model),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "history": record.history,
            "best": record.best,
            "stale_epochs": record.stale_epochs,
            "best_val_logits": None if logits is None else torch.from_numpy(logits),
        },
        config.work_dir / STATE_FILE,
    )


def load_train_state(work_dir: Path) -> dict[str, Any] | None:
    """The saved state in `work_dir` (None when there is none); a damaged file is a TrainingError."""
    path = Path(work_dir) / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say so instead of a pickle traceback
        raise TrainingError(f"The saved training state {path} cannot be read ({exc}).") from exc
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise TrainingError(f"The saved training state {path} has an unknown format; start without --resume.")
    return state


def restore_train_state(
    state: dict[str, Any],
    config: TrainConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau,
) -> RunRecord:
    """Load a saved state into the run's model, optimizer and scheduler; refuse one made otherwise."""
    signature = config_signature(config)
    if state["signature"] != signature:
        changed = [k for k in signature if state["signature"].get(k) != signature[k]]
        raise TrainingError(
            f"The saved training state in {config.work_dir} was made with other settings "
            f"({', '.join(changed)}); start without --resume."
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    lr = config.settings.lr
    if lr is not None and not math.isclose(lr, state["signature_lr"]):
        for group in optimizer.param_groups:  # an explicit new learning rate on resume wins
            group["lr"] = lr
    logits = state.get("best_val_logits")
    return RunRecord(
        epoch=int(state["epoch"]),
        history=list(state["history"]),
        best=dict(state["best"]),
        stale_epochs=int(state["stale_epochs"]),
        best_val_logits=None if logits is None else logits.numpy(),
    )


def resume_or_start_afresh(
    config: TrainConfig, trainee: Trainee, is_main: bool, progress: ProgressCallback | None = None
) -> RunRecord:
    """With `resume`, the saved state loaded into `trainee` and its record; else (or when nothing was
    saved) a fresh record and an emptied work folder."""

    def emit(event: TrainProgress) -> None:
        if progress is not None:
            progress(event)

    work_dir = config.work_dir
    state = load_train_state(work_dir) if config.resume else None
    if config.resume and state is None:
        emit(
            TrainProgress(phase="message", message=f"No saved training state in {work_dir}; starting afresh.")
        )
    record = RunRecord()
    if state is not None:
        record = restore_train_state(state, config, trainee.model, trainee.optimizer, trainee.scheduler)
        emit(TrainProgress(phase="message", message=f"Resuming after epoch {record.epoch} from {work_dir}."))
    elif is_main:
        shutil.rmtree(work_dir, ignore_errors=True)
    if is_main:
        work_dir.mkdir(parents=True, exist_ok=True)
    return record
