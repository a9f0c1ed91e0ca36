"""The model a run starts from, its loss, one optimisation step and validation logits.

CheXNet's recipe: DenseNet-121, BCE-with-logits over the 14 findings (optionally weighted by the
training label frequencies). bf16 autocast on CUDA, fp32 on the CPU.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.data.augment import to_model_input
from core.data.cache import ImageCache
from core.inference.artifact import ArtifactError, read_artifact
from core.inference.models import ModelInitError, create_model
from core.labels import FINDINGS
from core.training.config import DEFAULT_CROP, TrainConfig, TrainingError
from core.training.data import iterate_batches

# The fixed parts of the recipe, as the model card names them.
OPTIMIZER_TEXT = "Adam(betas=(0.9, 0.999))"
SCHEDULER_TEXT = "ReduceLROnPlateau(val loss, factor 0.1, patience 1)"


def base_crop_of(base_model: Path) -> int:
    """The crop a base model was trained at (its card's input spec): what fine-tuning it keeps."""
    try:
        return int(read_artifact(base_model).input_spec.get("crop", DEFAULT_CROP))
    except ArtifactError as exc:
        raise TrainingError(str(exc)) from exc


def build_initial_model(config: TrainConfig) -> tuple[nn.Module, str | None]:
    """(model, parent model name) for the requested initialisation."""
    if config.init == "artifact":
        if config.base_model is None:
            raise TrainingError("Fine-tuning from a model needs --base-model DIR.")
        try:
            base = read_artifact(config.base_model)
            if tuple(base.labels) != FINDINGS:
                raise TrainingError(
                    f"The base model {base.name} does not predict the 14 ChestX-ray14 findings."
                )
            return base.load_model("cpu").train(), base.name
        except ArtifactError as exc:
            raise TrainingError(str(exc)) from exc
    try:
        return create_model("densenet121", num_classes=len(FINDINGS), init=config.init), None
    except ModelInitError as exc:
        raise TrainingError(str(exc)) from exc


@dataclass
class Trainee:
    """The model a run trains, where it came from, and what trains it."""

    model: nn.Module
    parent: str | None  # the base model's name (init="artifact")
    pos_weight: np.ndarray | None  # class weighting, else None
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]


def build_trainee(config: TrainConfig, y_train: np.ndarray, device: torch.device) -> Trainee:
    """The initial model on `device`, the (weighted) loss, Adam and the plateau scheduler."""
    # A seeded initialisation (the same on every rank) without touching the caller's global RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.settings.seed)
        model, parent = build_initial_model(config)
    settings = config.settings
    pos_weight = positive_weights(y_train) if settings.class_weighting else None
    criterion = MaskedBCEWithLogits(None if pos_weight is None else torch.from_numpy(pos_weight).to(device))
    model = model.to(device, memory_format=torch.channels_last).train()
    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.learning_rate, betas=(0.9, 0.999), weight_decay=settings.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.1, patience=1)
    return Trainee(model, parent, pos_weight, criterion, optimizer, scheduler)


class MaskedBCEWithLogits(nn.Module):
    """BCE-with-logits, mean over the targets that are known: a target below 0 (an Uncertain finding
    under the "ignore" policy) is left out of the loss. With every target known it equals
    nn.BCEWithLogitsLoss."""

    def __init__(self, pos_weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.pos_weight = pos_weight

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        known = (targets >= 0).to(logits.dtype)
        losses = nn.functional.binary_cross_entropy_with_logits(
            logits, targets.clamp(min=0), pos_weight=self.pos_weight, reduction="none"
        )
        return (losses * known).sum() / known.sum().clamp(min=1)


def positive_weights(y_train: np.ndarray) -> np.ndarray:
    """pos_weight = negatives / positives per class (1 for a class without positives in training);
    targets below 0 (ignored Uncertain findings) count as neither."""
    positives = (y_train == 1).sum(axis=0)
    negatives = (y_train == 0).sum(axis=0)
    return np.where(positives > 0, negatives / np.maximum(positives, 1), 1.0).astype(np.float32)


def autocast(device: torch.device) -> AbstractContextManager:
    # bf16 on CUDA: no loss scaling needed, same exponent range as fp32. CPU trains in fp32.
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def precision_text(device: torch.device | str) -> str:
    kind = device.type if isinstance(device, torch.device) else device
    return "bf16 autocast" if kind == "cuda" else "fp32"


def optimization_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
) -> torch.Tensor:
    """One forward/backward/update; returns the detached loss on the device (no host sync)."""
    with autocast(device):
        logits = model(x)
    loss = criterion(logits.float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    cache: ImageCache,
    rows: np.ndarray,
    *,
    device: torch.device,
    crop: int,
    batch_size: int,
    workers: int = 2,
) -> np.ndarray:
    """Centre-crop logits (float32 [N, C]) for cached rows: validation with the training preprocessing."""
    was_training = model.training
    model.eval()
    dummy = np.zeros((len(rows), 1), dtype=np.float32)
    outputs = []
    for images, _ in iterate_batches(
        cache,
        rows,
        dummy,
        np.arange(len(rows)),
        batch_size,
        pin_memory=device.type == "cuda",
        workers=workers,
    ):
        x = to_model_input(images.to(device, non_blocking=True), train=False, crop=crop)
        with autocast(device):
            outputs.append(model(x).float())
    model.train(was_training)
    return torch.cat(outputs).cpu().numpy() if outputs else np.zeros((0, len(FINDINGS)), np.float32)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))


def bce_loss(logits: np.ndarray, targets: np.ndarray, pos_weight: np.ndarray | None) -> float:
    """The training criterion on host arrays (the validation loss)."""
    criterion = MaskedBCEWithLogits(None if pos_weight is None else torch.from_numpy(pos_weight))
    return float(criterion(torch.from_numpy(logits).float(), torch.from_numpy(targets).float()))


def finite(value: float | None) -> float | None:
    """JSON-safe: None for a missing, NaN or infinite value."""
    return None if value is None or not math.isfinite(value) else float(value)
