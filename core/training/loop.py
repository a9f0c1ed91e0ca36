"""Training CheXNet (Rajpurkar et al. 2017) on a ChestX-ray14 folder, from the preprocessed image cache.

Recipe: DenseNet-121, BCE-with-logits over the 14 findings (optionally weighted by the training label
frequencies), Adam(0.9, 0.999), ReduceLROnPlateau(factor 0.1, patience 1) on the validation loss, the
best epoch by mean validation AUROC is kept, early stopping after `patience` epochs without improvement.
Data: patient-wise train/val split of the official train_val list; images come only from the uint8
cache and are augmented on the training device (random crop + flip, centre crop for validation).

One process or many: under `torchrun --nproc_per_node=N -m core train ...` each rank trains on its
shard of every epoch with DistributedDataParallel; rank 0 alone validates, prints and writes files.

Resumable: after every epoch `train_state.pt` is written to the work folder `<out>.work/` beside the
output (`checkpoints`); `resume=True` continues after the last saved epoch.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from core.data.augment import to_model_input
from core.devices import DeviceError, device_description, resolve_device
from core.distributed import (
    DistInfo,
    all_reduce_mean,
    barrier,
    broadcast_floats,
    env_dist_info,
    init_distributed,
    shard_epoch_order,
    shutdown_distributed,
)
from core.evaluation.metrics import auroc_per_class, mean_auroc
from core.inference.artifact import ModelArtifact, read_artifact
from core.labels import FINDINGS
from core.training.card import write_model_card
from core.training.checkpoints import RunRecord, resume_or_start_afresh, save_best_weights, save_train_state
from core.training.config import (
    ProgressCallback,
    TrainConfig,
    TrainingCancelled,
    TrainingError,
    TrainProgress,
)
from core.training.data import TrainData, iterate_batches, prepare_data
from core.training.step import (
    Trainee,
    base_crop_of,
    bce_loss,
    build_trainee,
    finite,
    optimization_step,
    precision_text,
    predict_logits,
    sigmoid,
)


class EtaClock:
    """Recent seconds per training step and the last validation's duration, for the ETA."""

    def __init__(self) -> None:
        self.windows: deque[tuple[float, int]] = deque(maxlen=20)
        self.val_s: float | None = None

    def add(self, seconds: float, steps: int) -> None:
        if steps > 0:
            self.windows.append((seconds, steps))

    def eta(
        self,
        steps_left_in_epoch: int,
        epochs_after: int,
        steps_per_epoch: int,
        budget_left_s: float | None = None,
    ) -> float | None:
        if not self.windows:
            return None
        per_step = sum(s for s, _ in self.windows) / sum(n for _, n in self.windows)
        per_val = self.val_s or 0.0
        this_epoch = steps_left_in_epoch * per_step + per_val
        epoch_s = steps_per_epoch * per_step + per_val
        if budget_left_s is not None:  # the epochs a time budget will let start
            epochs_after = min(epochs_after, max(0, int((budget_left_s - this_epoch) // max(epoch_s, 1e-9))))
        return this_epoch + epochs_after * epoch_s


@dataclass
class _Run:
    """The fixed parts of one run, shared by the epoch and validation functions."""

    config: TrainConfig
    info: DistInfo
    device: torch.device
    device_text: str
    data: TrainData
    trainee: Trainee  # its model is the plain one (validation, checkpoints)
    train_model: nn.Module  # the model the steps run (DDP-wrapped under torchrun)
    progress: ProgressCallback | None
    should_cancel: Callable[[], bool] | None
    started: float
    steps_per_epoch: int
    every: int  # steps between "train" progress events (and host syncs)
    workers: int
    clock: EtaClock = dataclasses.field(default_factory=EtaClock)

    @property
    def epochs(self) -> int:
        return self.config.settings.epochs

    @property
    def per_rank_batch(self) -> int:
        return self.config.settings.batch_size // self.info.world_size

    def event(self, phase: str, epoch: int, **values: Any) -> None:
        """One progress event (rank 0 only), with the run's epoch count and device filled in."""
        if self.progress is not None:
            event = TrainProgress(
                phase=phase, epoch=epoch, epochs=self.epochs, device=self.device_text, **values
            )
            self.progress(event)

    def eta(self, steps_left: int, epoch: int) -> float | None:
        budget = self.config.settings.time_budget_s
        left = None if budget is None else budget - (time.perf_counter() - self.started)
        return self.clock.eta(steps_left, self.epochs - epoch, self.steps_per_epoch, left)

    def images_before(self, epoch: int, step: int = 0) -> int:
        return ((epoch - 1) * self.steps_per_epoch + step) * self.config.settings.batch_size


@dataclass
class _Validation:
    loss: float
    auroc: dict[str, float | None]
    mean: float | None
    logits: np.ndarray | None  # rank 0 only


def train(
    config: TrainConfig,
    progress: ProgressCallback | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> ModelArtifact:
    """Train a model as `config` says and write it as an artifact to `config.out_dir`.

    `progress` receives `TrainProgress` events (rank 0 only); `should_cancel` is polled between steps
    and makes the run raise `TrainingCancelled` (the last finished epoch stays saved for `resume`); it is
    ignored under torchrun. A fine-tune whose `base_crop` is None keeps the base model's crop.
    Returns the artifact on rank 0; other ranks of a multi-GPU run return it too once rank 0 wrote it.
    """
    if config.init == "artifact" and config.base_crop is None and config.base_model is not None:
        config = dataclasses.replace(config, base_crop=base_crop_of(config.base_model))
    info = env_dist_info()
    try:
        device = resolve_device(config.device, info)
    except DeviceError as exc:
        raise TrainingError(str(exc)) from exc
    previous_threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    init_distributed(info, device)
    # Several ranks asking their own should_cancel could disagree and deadlock DDP: there, cancelling
    # is terminating the process group (the last finished epoch stays saved).
    if info.enabled:
        should_cancel = None
    try:
        run, record = _start(config, info, device, progress if info.is_main else None, should_cancel)
        return _train(run, record)
    finally:
        shutdown_distributed()
        torch.set_num_threads(previous_threads)


def _start(
    config: TrainConfig,
    info: DistInfo,
    device: torch.device,
    progress: ProgressCallback | None,
    should_cancel: Callable[[], bool] | None,
) -> tuple[_Run, RunRecord]:
    """Data, model and optimizer of a run, and its resumed (or fresh) record. The settings' own bounds
    were checked when they were made; what depends on the run is checked here."""
    batch_size = config.settings.batch_size
    if batch_size % info.world_size:
        raise TrainingError(
            f"The batch size ({batch_size}) must be a positive multiple of the number of processes "
            f"({info.world_size})."
        )
    if config.image_size < 32:
        raise TrainingError(f"An image size of {config.image_size} px is too small for DenseNet-121.")
    started = time.perf_counter()
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True  # fixed input shapes: pick the fastest convolutions once
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # Rank 0 fills the cache; the others wait, then open it read-only.
    data = prepare_data(config, progress, build=True) if info.is_main else None
    barrier(info)
    if data is None:
        data = prepare_data(config, None, build=False)
    trainee = build_trainee(config, data.y_train, device)
    record = resume_or_start_afresh(config, trainee, info.is_main, progress)
    train_model: nn.Module = trainee.model
    if info.enabled:  # after the resume: DDP starts from the (restored) weights of rank 0
        train_model = nn.parallel.DistributedDataParallel(
            trainee.model, device_ids=[device.index] if cuda else None, gradient_as_bucket_view=True
        )
    shard_len = len(shard_epoch_order(len(data.train_ids), 0, config.settings.seed, info))
    steps_per_epoch = math.ceil(shard_len / (batch_size // info.world_size))
    device_text = device_description(device, info.world_size)
    run = _Run(config=config, info=info, device=device, device_text=device_text, data=data, trainee=trainee,
               train_model=train_model, progress=progress, should_cancel=should_cancel, started=started,
               steps_per_epoch=steps_per_epoch, every=config.progress_every or (25 if cuda else 1),
               workers=config.workers or 2)  # fmt: skip
    return run, record


def _train(run: _Run, record: RunRecord) -> ModelArtifact:
    """The epochs (until done, early stopping or the time budget), then the model and its card."""
    config, info = run.config, run.info
    stop_reason: str | None = None
    for epoch in range(record.epoch + 1, run.epochs + 1):
        stop_reason = _stop_reason(run, record)
        if stop_reason is not None:
            break
        epoch_started = time.perf_counter()
        train_loss, n_images = _train_epoch(run, epoch)
        train_seconds = time.perf_counter() - epoch_started
        validation = _validate(run, epoch)
        _finish_epoch(run, record, epoch, train_loss, validation, epoch_started, train_seconds, n_images)
        barrier(info)

    artifact = None
    if info.is_main:
        trainee = run.trainee
        artifact = write_model_card(config, run.data, trainee.model, record, parent=trainee.parent,
                                    pos_weight=trainee.pos_weight, device_text=run.device_text,
                                    precision=precision_text(run.device), stop_reason=stop_reason,
                                    wall_seconds=time.perf_counter() - run.started)  # fmt: skip
        if not config.keep_work:
            shutil.rmtree(config.work_dir, ignore_errors=True)
        run.event("done", record.epoch, val_mean_auroc=record.best.get("val_mean_auroc"),
                  message=f"Wrote model '{artifact.name}' to {artifact.path}.")  # fmt: skip
    barrier(info)
    return artifact if artifact is not None else read_artifact(config.out_dir)


def _stop_reason(run: _Run, record: RunRecord) -> str | None:
    """Why no further epoch starts (early stopping, the time budget), or None."""
    settings = run.config.settings
    patience = settings.patience
    if record.best.get("score") is not None and patience is not None and record.stale_epochs >= patience:
        return f"early stopping: no better validation mean AUROC for {record.stale_epochs} epoch(s)"
    budget = settings.time_budget_s
    if budget is not None and record.history:
        over = time.perf_counter() - run.started + record.history[-1]["seconds"] > budget
        # Clocks differ between ranks: rank 0 decides for all, or some ranks would wait forever.
        if broadcast_floats([float(over)], run.info, run.device)[0]:
            return f"time budget of {budget / 60:.0f} min reached"
    return None


def _train_epoch(run: _Run, epoch: int) -> tuple[float, int]:
    """One pass over this rank's shard of the training split: (mean loss over the ranks, images seen)."""
    config, info, device, data, trainee = run.config, run.info, run.device, run.data, run.trainee
    generator = torch.Generator(device=device)
    generator.manual_seed(config.settings.seed * 1_000_003 + epoch * 101 + info.rank)
    order = shard_epoch_order(len(data.train_ids), epoch, config.settings.seed, info)
    # Losses are summed on the device: reading one forces a host sync, done every `every` steps only.
    loss_sum = torch.zeros((), device=device)
    epoch_loss_sum = torch.zeros((), device=device)
    loss_count = window_images = 0
    window_started = time.perf_counter()
    batches = iterate_batches(data.cache, data.train_rows, data.y_train, order, run.per_rank_batch,
                              pin_memory=device.type == "cuda", workers=run.workers)  # fmt: skip
    run.event("train", epoch, steps_per_epoch=run.steps_per_epoch, images_seen=run.images_before(epoch),
              lr=trainee.lr)  # fmt: skip
    try:
        for step, (images, targets) in enumerate(batches, start=1):
            if run.should_cancel is not None and run.should_cancel():
                saved = f"epoch {epoch - 1} is saved and can be resumed" if epoch > 1 else "nothing was saved"
                raise TrainingCancelled(f"Training was cancelled during epoch {epoch}; {saved}.")
            x = to_model_input(images.to(device, non_blocking=True), train=True, crop=config.image_size,
                               generator=generator)  # fmt: skip
            y = targets.to(device, non_blocking=True)
            loss = optimization_step(run.train_model, x, y, trainee.criterion, trainee.optimizer, device)
            loss_sum += loss
            epoch_loss_sum += loss
            loss_count += 1
            window_images += len(images) * info.world_size
            if step % run.every == 0 or step == run.steps_per_epoch:
                mean_loss = float(loss_sum) / loss_count  # the host sync
                now = time.perf_counter()
                run.clock.add(now - window_started, loss_count)  # wall time after a sync: includes data waits
                run.event("train", epoch, step=step, steps_per_epoch=run.steps_per_epoch,
                          images_seen=run.images_before(epoch, step), loss=finite(mean_loss), lr=trainee.lr,
                          eta_s=run.eta(run.steps_per_epoch - step, epoch),
                          images_per_s=window_images / max(now - window_started, 1e-9))  # fmt: skip
                loss_sum.zero_()
                loss_count = window_images = 0
                window_started = now
    finally:
        batches.close()
    train_loss = all_reduce_mean(float(epoch_loss_sum) / max(run.steps_per_epoch, 1), info, device)
    return train_loss, len(order) * info.world_size


def _validate(run: _Run, epoch: int) -> _Validation:
    """Validation on rank 0 (the unwrapped model: no collectives); loss and mean AUROC go to every rank."""
    started = time.perf_counter()
    auroc: dict[str, float | None] = {}
    logits = None
    values = [0.0, 0.0]
    if run.info.is_main:
        data = run.data
        run.event("validate", epoch, total=len(data.val_ids))
        logits = predict_logits(run.trainee.model, data.cache, data.val_rows, device=run.device,
                                crop=run.config.image_size, batch_size=max(run.per_rank_batch, 32),
                                workers=run.workers)  # fmt: skip
        auroc = auroc_per_class(data.y_val, sigmoid(logits), FINDINGS)
        mean = mean_auroc(auroc)
        values = [bce_loss(logits, data.y_val, run.trainee.pos_weight), math.nan if mean is None else mean]
    loss, mean_or_nan = broadcast_floats(values, run.info, run.device)
    run.clock.val_s = time.perf_counter() - started
    mean = None if math.isnan(mean_or_nan) else mean_or_nan
    return _Validation(loss=loss, auroc=auroc, mean=mean, logits=logits)


def _finish_epoch(
    run: _Run,
    record: RunRecord,
    epoch: int,
    train_loss: float,
    validation: _Validation,
    epoch_started: float,
    train_seconds: float,
    n_images: int,
) -> None:
    """Scheduler step, history, best epoch and early-stopping count, the saved state and the event."""
    trainee = run.trainee
    lr_used = trainee.lr
    trainee.scheduler.step(validation.loss)
    entry = {
        "epoch": epoch,
        "train_loss": finite(train_loss),
        "val_loss": finite(validation.loss),
        "val_auroc": validation.auroc,
        "val_mean_auroc": validation.mean,
        "lr": lr_used,
        "seconds": round(time.perf_counter() - epoch_started, 2),
        "train_seconds": round(train_seconds, 2),
        "images_per_s": round(n_images / max(train_seconds, 1e-9), 2),
    }
    # Mean AUROC picks the best epoch; if no class has both outcomes in validation, the loss does.
    score = validation.mean if validation.mean is not None else -validation.loss
    if record.add_epoch(entry, score) and run.info.is_main:
        record.best_val_logits = validation.logits
        save_best_weights(trainee.model, run.config.work_dir)
    if run.info.is_main:
        save_train_state(run.config, record, trainee.model, trainee.optimizer, trainee.scheduler)
    run.event("epoch", epoch, step=run.steps_per_epoch, steps_per_epoch=run.steps_per_epoch,
              images_seen=run.images_before(epoch + 1), loss=entry["train_loss"], lr=lr_used,
              val_loss=entry["val_loss"], val_auroc=validation.auroc, val_mean_auroc=validation.mean,
              eta_s=run.eta(0, epoch) if epoch < run.epochs else 0.0,
              images_per_s=entry["images_per_s"])  # fmt: skip
