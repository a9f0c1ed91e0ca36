"""Training CheXNet (Rajpurkar et al. 2017) on a ChestX-ray14 folder, from the preprocessed image cache.

Recipe: DenseNet-121, BCE-with-logits over the 14 findings (optionally weighted by the training label
frequencies), Adam(0.9, 0.999), ReduceLROnPlateau(factor 0.1, patience 1) on the validation loss, the
best epoch by mean validation AUROC is kept, early stopping after `patience` epochs without improvement.
Data: patient-wise train/val split of the official train_val list; images come only from the 256-px
uint8 cache and are augmented on the training device (random crop + flip, centre crop for validation).

One process or many: under `torchrun --nproc_per_node=N -m core train ...` each rank trains on its
shard of every epoch with DistributedDataParallel; rank 0 alone validates, prints and writes files.

Resumable: after every epoch `train_state.pt` (model, optimizer, scheduler, history, best) is written to
the work folder `<out>.work/` beside the output; `resume=True` continues after the last saved epoch.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from core.artifact import ModelArtifact, default_input_spec, new_card, read_artifact, save_artifact
from core.augment import to_model_input
from core.cache import DEFAULT_SIZE, ImageCache, build_cache
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
from core.errors import Cancelled, UserError
from core.labels import FINDINGS
from core.metrics import auroc_per_class, mean_auroc, youden_thresholds
from core.prefetch import prefetch_map

STATE_FILE = "train_state.pt"
BEST_WEIGHTS_FILE = "best.safetensors"
STATE_FORMAT = 1
INITS = ("random", "imagenet", "artifact")
DEFAULT_LR = 1e-3
DEFAULT_FINETUNE_LR = 1e-4
# Full ChestX-ray14: what "time per epoch" figures are extrapolated to.
FULL_DATASET_IMAGES = 112_120


class TrainingError(UserError, RuntimeError):
    """Training cannot start or go on as asked (one human sentence)."""


class TrainingCancelled(Cancelled):
    """`should_cancel()` returned True; the last finished epoch is saved and can be resumed."""


@dataclass
class TrainConfig:
    data_dir: Path
    out_dir: Path
    epochs: int = 10
    batch_size: int = 16  # global: split evenly over the ranks of a multi-GPU run
    lr: float | None = None  # None: 1e-3, or 1e-4 when fine-tuning an artifact
    weight_decay: float = 0.0
    init: str = "random"  # random | imagenet | artifact
    base_model: Path | None = None  # the artifact to start from (init="artifact")
    labels_table: Path | None = None  # CSV: image_index + the 14 findings (+ optional exclude column)
    exclude: Path | None = None  # image index list (text or CSV) left out of training and validation
    class_weighting: bool = False
    val_fraction: float = 0.1
    seed: int = 0
    patience: int | None = 3  # epochs without a better mean validation AUROC before stopping; None: never
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    workers: int = 0  # threads for the cache build and batch prefetch; 0: automatic
    resume: bool = False
    image_size: int = 224  # the crop the network sees
    name: str | None = None  # model name (default: the output folder's name)
    cache_dir: Path | None = None  # default: a folder per dataset under core.paths.cache_dir()
    description: str | None = None  # prepended to the generated description
    keep_work: bool = False  # keep `<out>.work/` (train_state.pt) after a successful run
    progress_every: int | None = None  # steps between progress events (None: 1 on CPU, 25 on CUDA)
    # Wall-clock budget: no epoch is started that the last epoch's duration says would end past it.
    time_budget_s: float | None = None
    # CPU threads for this run (torch.set_num_threads, restored afterwards); None: torch's default. On a
    # CPU shared with other busy processes 1 thread wastes far less time in OpenMP spin-waits.
    threads: int | None = None

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).expanduser()
        self.out_dir = Path(self.out_dir).expanduser()
        for name in ("base_model", "labels_table", "exclude", "cache_dir"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, Path(value).expanduser())

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return float(self.lr)
        return DEFAULT_FINETUNE_LR if self.init == "artifact" else DEFAULT_LR

    @property
    def cache_size(self) -> int:
        """Side of the cached images: 256 for the standard 224 crop, the same 256:224 ratio otherwise."""
        return DEFAULT_SIZE if self.image_size == 224 else round(self.image_size * DEFAULT_SIZE / 224)

    @property
    def work_dir(self) -> Path:
        # Beside the output, not in it: save_artifact replaces the output folder as a whole.
        return self.out_dir.with_name(self.out_dir.name + ".work")

    @property
    def model_name(self) -> str:
        return self.name or self.out_dir.name


@dataclass
class TrainProgress:
    """One progress event. `phase`: "cache" (done/total images), "train" (every few steps), "validate",
    "epoch" (an epoch finished: val_* filled in), "message" (text only) and "done"."""

    phase: str
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    steps_per_epoch: int = 0
    images_seen: int = 0
    loss: float | None = None  # mean training loss since the previous "train" event
    lr: float | None = None
    val_loss: float | None = None
    val_auroc: dict[str, float | None] | None = None
    val_mean_auroc: float | None = None
    eta_s: float | None = None
    device: str = ""
    images_per_s: float | None = None
    done: int = 0
    total: int = 0
    message: str = ""


ProgressCallback = Callable[[TrainProgress], None]


# ----------------------------------------------------------------------------------------------------
# Data


@dataclass
class TrainData:
    root: Path
    cache: ImageCache
    train_ids: list[str]
    val_ids: list[str]
    train_rows: np.ndarray
    val_rows: np.ndarray
    y_train: np.ndarray  # float32 [N, 14]
    y_val: np.ndarray
    n_train_patients: int
    n_val_patients: int
    label_source: str
    n_excluded: int
    exclusion_sources: list[str] = field(default_factory=list)
    n_unreadable: int = 0


def read_labels_table(path: Path) -> tuple[pd.DataFrame, set[str]]:
    """A labels table CSV -> (image_index + 14 finding columns as 0/1, images marked for exclusion).

    Accepts `image_index` or `Image Index`; an optional `exclude` column (1/true/yes) marks images to
    leave out (e.g. rejected during label review).
    """
    from core.dataset import DatasetError

    try:
        table = pd.read_csv(path, dtype={"image_index": str, "Image Index": str})
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DatasetError(f"Cannot read the labels table {path.name}: {exc}.") from exc
    table.columns = [str(c).strip() for c in table.columns]
    if "image_index" not in table.columns and "Image Index" in table.columns:
        table = table.rename(columns={"Image Index": "image_index"})
    absent = [c for c in ("image_index", *FINDINGS) if c not in table.columns]
    if absent:
        raise DatasetError(f"The labels table {path.name} lacks the column(s) {', '.join(absent)}.")
    table["image_index"] = table["image_index"].astype(str).str.strip()
    values = table[list(FINDINGS)].apply(pd.to_numeric, errors="coerce")
    if values.isna().any().any() or not values.isin([0, 1]).all().all():
        raise DatasetError(f"The labels table {path.name} must hold only 0 or 1 in the finding columns.")
    table[list(FINDINGS)] = values.astype(np.int64)
    excluded: set[str] = set()
    if "exclude" in table.columns:
        flag = table["exclude"].astype(str).str.strip().str.lower().isin(["1", "1.0", "true", "yes", "y"])
        excluded = set(table.loc[flag, "image_index"])
    return table[["image_index", *FINDINGS]], excluded


def default_cache_folder(data_dir: Path, size: int) -> Path:
    """One cache per dataset folder and size: image indexes alone do not identify pixels across copies."""
    from core.paths import cache_dir

    root = Path(data_dir).resolve()
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", root.name).strip("-") or "dataset"
    digest = hashlib.sha256(str(root).encode()).hexdigest()[:10]
    return cache_dir() / "images" / f"{slug}-{digest}-{size}px"


def prepare_data(
    config: TrainConfig,
    progress: ProgressCallback | None = None,
    build: bool = True,
) -> TrainData:
    """Read the dataset, split it patient-wise, apply exclusions and (with `build`) fill the cache.

    With `build=False` the cache is only opened (ranks > 0 of a multi-GPU run, after rank 0 built it).
    """
    from core.cache import CacheError
    from core.dataset import (
        DatasetError,
        apply_exclusions,
        labels_matrix,
        load_chestxray14,
        read_image_list,
        split_patientwise,
    )

    try:
        ds = load_chestxray14(config.data_dir)
        splits = split_patientwise(ds, config.val_fraction, config.seed)
        table, excluded = (None, set())
        sources: list[str] = []
        if config.labels_table is not None:
            table, excluded = read_labels_table(config.labels_table)
            if excluded:
                sources.append(f"{config.labels_table.name} (exclude column)")
        if config.exclude is not None:
            excluded |= read_image_list(config.exclude)
            sources.append(config.exclude.name)
        pool_before = len(splits["train"]) + len(splits["val"])
        train_ids = apply_exclusions(splits["train"], excluded)
        val_ids = apply_exclusions(splits["val"], excluded)
        n_excluded = pool_before - len(train_ids) - len(val_ids)
    except DatasetError as exc:
        raise TrainingError(str(exc)) from exc
    if not train_ids:
        raise TrainingError("No training images are left after the split and the exclusions.")
    if not val_ids:
        raise TrainingError(
            "The validation split is empty: training needs at least two patients and a validation "
            "fraction above 0."
        )

    folder = config.cache_dir or default_cache_folder(config.data_dir, config.cache_size)
    n_unreadable = 0
    try:
        if build:

            def cache_progress(done: int, total: int) -> None:
                if progress is not None:
                    progress(TrainProgress(phase="cache", done=done, total=total))

            cache = build_cache(
                ds.image_paths(train_ids + val_ids),
                folder,
                size=config.cache_size,
                workers=config.workers or None,
                progress=cache_progress,
            )
            failed = set(cache.report.failed) if cache.report else set()
            n_unreadable = len(failed)
            if failed:
                train_ids = [i for i in train_ids if i not in failed]
                val_ids = [i for i in val_ids if i not in failed]
        else:
            cache = ImageCache.open(folder)
            train_ids = [i for i in train_ids if i in cache]
            val_ids = [i for i in val_ids if i in cache]
        if cache.size != config.cache_size:
            raise TrainingError(
                f"The cache in {folder} holds {cache.size}-px images, not {config.cache_size}-px."
            )
        train_rows, val_rows = cache.rows(train_ids), cache.rows(val_ids)
        y_train = labels_matrix(ds, train_ids, table)
        y_val = labels_matrix(ds, val_ids, table)
    except (CacheError, DatasetError) as exc:
        raise TrainingError(str(exc)) from exc
    if not train_ids or not val_ids:
        raise TrainingError("Too few readable images are left to train and validate.")

    patients = ds.entries["patient_id"]
    return TrainData(
        root=ds.root,
        cache=cache,
        train_ids=train_ids,
        val_ids=val_ids,
        train_rows=train_rows,
        val_rows=val_rows,
        y_train=y_train,
        y_val=y_val,
        n_train_patients=int(patients.loc[train_ids].nunique()),
        n_val_patients=int(patients.loc[val_ids].nunique()),
        label_source=(
            f"labels table {config.labels_table.name} (NLP labels for images it does not list)"
            if config.labels_table is not None
            else f"NLP labels of {ds.data_entry_name}"
        ),
        n_excluded=n_excluded,
        exclusion_sources=sources,
        n_unreadable=n_unreadable,
    )


def iterate_batches(
    cache: ImageCache,
    rows: np.ndarray,
    labels: np.ndarray,
    order: np.ndarray,
    batch_size: int,
    *,
    pin_memory: bool = False,
    workers: int = 2,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(uint8 [B, S, S], float32 [B, 14]) CPU batches in `order`, read ahead by `workers` threads.

    Pinned batches let the host-to-GPU copy run asynchronously (non_blocking) while the GPU computes.
    """
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]

    def load(chunk: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.from_numpy(cache.batch(rows[chunk]))
        targets = torch.from_numpy(np.ascontiguousarray(labels[chunk], dtype=np.float32))
        if pin_memory:
            images, targets = images.pin_memory(), targets.pin_memory()
        return images, targets

    yield from prefetch_map(load, chunks, workers=workers, depth=max(2, workers * 2), name="batches")


# ----------------------------------------------------------------------------------------------------
# Model, device, loss


def resolve_device(name: str, info: DistInfo | None = None) -> torch.device:
    info = info or DistInfo()
    if name in ("auto", "", None):
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainingError("CUDA was asked for but no GPU is available; use --device cpu.")
        if info.enabled:
            device = torch.device("cuda", info.local_rank)
        elif device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    elif info.enabled and device.type != "cpu":
        raise TrainingError(f"Multi-process training supports CUDA or CPU, not {device.type}.")
    return device


def device_description(device: torch.device, world_size: int = 1) -> str:
    if device.type == "cuda":
        text = torch.cuda.get_device_name(device)
        return f"{world_size} x {text}" if world_size > 1 else text
    threads = torch.get_num_threads()
    return f"CPU ({threads} thread{'s' if threads > 1 else ''})" + (
        f" x {world_size} processes" if world_size > 1 else ""
    )


def build_initial_model(config: TrainConfig) -> tuple[nn.Module, str | None]:
    """(model, parent model name) for the requested initialisation."""
    from core.artifact import ArtifactError
    from core.models import ModelInitError, create_model

    if config.init not in INITS:
        raise TrainingError(f"Unknown initialisation '{config.init}': use {', '.join(INITS)}.")
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


def positive_weights(y_train: np.ndarray) -> np.ndarray:
    """pos_weight = negatives / positives per class (1 for a class without positives in training)."""
    positives = y_train.sum(axis=0)
    negatives = y_train.shape[0] - positives
    return np.where(positives > 0, negatives / np.maximum(positives, 1), 1.0).astype(np.float32)


def _autocast(device: torch.device):
    # bf16 on CUDA: no loss scaling needed, same exponent range as fp32. CPU trains in fp32.
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def optimization_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
) -> torch.Tensor:
    """One forward/backward/update; returns the detached loss on the device (no host sync)."""
    with _autocast(device):
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
        with _autocast(device):
            outputs.append(model(x).float())
    model.train(was_training)
    return torch.cat(outputs).cpu().numpy() if outputs else np.zeros((0, len(FINDINGS)), np.float32)


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))


def _bce(logits: np.ndarray, targets: np.ndarray, pos_weight: np.ndarray | None) -> float:
    criterion = nn.BCEWithLogitsLoss(pos_weight=None if pos_weight is None else torch.from_numpy(pos_weight))
    return float(criterion(torch.from_numpy(logits).float(), torch.from_numpy(targets).float()))


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


# ----------------------------------------------------------------------------------------------------
# Checkpoints


def _config_signature(config: TrainConfig) -> dict[str, Any]:
    """What must not change between a run and its resumption (primitive values: weights_only loads)."""
    return {
        "data_dir": str(config.data_dir.resolve()),
        "image_size": config.image_size,
        "val_fraction": config.val_fraction,
        "seed": config.seed,
        "init": config.init,
        "batch_size": config.batch_size,
        "labels": list(FINDINGS),
    }


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}


def load_train_state(work_dir: Path) -> dict[str, Any] | None:
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


# ----------------------------------------------------------------------------------------------------
# The loop


class _Clock:
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


def train(
    config: TrainConfig,
    progress: ProgressCallback | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> ModelArtifact:
    """Train a model as `config` says and write it as an artifact to `config.out_dir`.

    `progress` receives `TrainProgress` events (rank 0 only); `should_cancel` is polled between steps
    and makes the run raise `TrainingCancelled` (the last finished epoch stays saved for `resume`); it is
    ignored under torchrun.
    Returns the artifact on rank 0; other ranks of a multi-GPU run return it too once rank 0 wrote it.
    """
    info = env_dist_info()
    device = resolve_device(config.device, info)
    previous_threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    init_distributed(info, device)
    # Several ranks asking their own should_cancel could disagree and deadlock DDP: there, cancelling
    # is terminating the process group (the last finished epoch stays saved).
    if info.enabled:
        should_cancel = None
    try:
        return _train(config, info, device, progress if info.is_main else None, should_cancel)
    finally:
        shutdown_distributed()
        torch.set_num_threads(previous_threads)


def _train(
    config: TrainConfig,
    info: DistInfo,
    device: torch.device,
    progress: ProgressCallback | None,
    should_cancel: Callable[[], bool] | None,
) -> ModelArtifact:
    def emit(event: TrainProgress) -> None:
        if progress is not None:
            progress(event)

    if config.epochs < 1:
        raise TrainingError("The number of epochs must be at least 1.")
    if config.batch_size < 1 or config.batch_size % info.world_size:
        raise TrainingError(
            f"The batch size ({config.batch_size}) must be a positive multiple of the number of processes "
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
    device_text = device_description(device, info.world_size)
    workers = config.workers or 2

    # Rank 0 fills the cache; the others wait, then open it read-only.
    data = prepare_data(config, emit, build=True) if info.is_main else None
    barrier(info)
    if data is None:
        data = prepare_data(config, None, build=False)

    # A seeded initialisation (the same on every rank) without touching the caller's global RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model, parent = build_initial_model(config)
    pos_weight = positive_weights(data.y_train) if config.class_weighting else None
    criterion = nn.BCEWithLogitsLoss(
        pos_weight=None if pos_weight is None else torch.from_numpy(pos_weight).to(device)
    )
    model = model.to(device, memory_format=torch.channels_last).train()
    lr = config.learning_rate
    optimizer = torch.optim.Adam(
        model.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.1, patience=1)

    work_dir = config.work_dir
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"epoch": 0, "score": None}
    best_val_logits: np.ndarray | None = None
    stale_epochs = 0
    start_epoch = 1
    signature = _config_signature(config)
    state = load_train_state(work_dir) if config.resume else None
    if config.resume and state is None:
        emit(
            TrainProgress(phase="message", message=f"No saved training state in {work_dir}; starting afresh.")
        )
    if state is not None:
        if state["signature"] != signature:
            changed = [k for k in signature if state["signature"].get(k) != signature[k]]
            raise TrainingError(
                f"The saved training state in {work_dir} was made with other settings "
                f"({', '.join(changed)}); start without --resume."
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = list(state["history"])
        best = dict(state["best"])
        stale_epochs = int(state["stale_epochs"])
        best_val_logits = (
            state["best_val_logits"].numpy() if state.get("best_val_logits") is not None else None
        )
        start_epoch = int(state["epoch"]) + 1
        if config.lr is not None and not math.isclose(config.lr, state["signature_lr"]):
            for group in optimizer.param_groups:  # an explicit new --lr on resume wins
                group["lr"] = config.lr
        emit(
            TrainProgress(phase="message", message=f"Resuming after epoch {state['epoch']} from {work_dir}.")
        )
    elif info.is_main:
        shutil.rmtree(work_dir, ignore_errors=True)
    if info.is_main:
        work_dir.mkdir(parents=True, exist_ok=True)

    train_model: nn.Module = model
    if info.enabled:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if cuda else None, gradient_as_bucket_view=True
        )

    per_rank_batch = config.batch_size // info.world_size
    shard_len = len(shard_epoch_order(len(data.train_ids), 0, config.seed, info))
    steps_per_epoch = math.ceil(shard_len / per_rank_batch)
    every = config.progress_every or (25 if cuda else 1)
    clock = _Clock()

    def budget_left(now: float) -> float | None:
        return None if config.time_budget_s is None else config.time_budget_s - (now - started)

    generator = torch.Generator(device=device)
    stop_reason: str | None = None
    epoch = start_epoch - 1

    for epoch in range(start_epoch, config.epochs + 1):
        if best.get("score") is not None and config.patience is not None and stale_epochs >= config.patience:
            stop_reason = f"early stopping: no better validation mean AUROC for {stale_epochs} epoch(s)"
            break
        if config.time_budget_s is not None and history:
            over = time.perf_counter() - started + history[-1]["seconds"] > config.time_budget_s
            # Clocks differ between ranks: rank 0 decides for all, or some ranks would wait forever.
            if broadcast_floats([float(over)], info, device)[0]:
                stop_reason = f"time budget of {config.time_budget_s / 60:.0f} min reached"
                break
        epoch_started = time.perf_counter()
        generator.manual_seed(config.seed * 1_000_003 + epoch * 101 + info.rank)
        order = shard_epoch_order(len(data.train_ids), epoch, config.seed, info)
        # Losses are summed on the device: reading one forces a host sync, done every `every` steps only.
        loss_sum = torch.zeros((), device=device)
        epoch_loss_sum = torch.zeros((), device=device)
        loss_count = 0
        window_started = time.perf_counter()
        window_images = 0
        batches = iterate_batches(
            data.cache, data.train_rows, data.y_train, order, per_rank_batch, pin_memory=cuda, workers=workers
        )
        emit(TrainProgress(phase="train", epoch=epoch, epochs=config.epochs, steps_per_epoch=steps_per_epoch,
                           images_seen=(epoch - 1) * steps_per_epoch * config.batch_size,
                           lr=optimizer.param_groups[0]["lr"], device=device_text))  # fmt: skip
        try:
            for step, (images, targets) in enumerate(batches, start=1):
                if should_cancel is not None and should_cancel():
                    raise TrainingCancelled(
                        f"Training was cancelled during epoch {epoch}; "
                        + (
                            f"epoch {epoch - 1} is saved and can be resumed."
                            if epoch > 1
                            else "nothing was saved."
                        )
                    )
                x = to_model_input(
                    images.to(device, non_blocking=True),
                    train=True,
                    crop=config.image_size,
                    generator=generator,
                )
                y = targets.to(device, non_blocking=True)
                loss = optimization_step(train_model, x, y, criterion, optimizer, device)
                loss_sum += loss
                epoch_loss_sum += loss
                loss_count += 1
                window_images += len(images) * info.world_size
                if step % every == 0 or step == steps_per_epoch:
                    mean_loss = float(loss_sum) / loss_count  # the host sync
                    now = time.perf_counter()
                    clock.add(now - window_started, loss_count)  # wall time after a sync: includes data waits
                    emit(
                        TrainProgress(
                            phase="train",
                            epoch=epoch,
                            epochs=config.epochs,
                            step=step,
                            steps_per_epoch=steps_per_epoch,
                            images_seen=((epoch - 1) * steps_per_epoch + step) * config.batch_size,
                            loss=_finite(mean_loss),
                            lr=optimizer.param_groups[0]["lr"],
                            eta_s=clock.eta(
                                steps_per_epoch - step,
                                config.epochs - epoch,
                                steps_per_epoch,
                                budget_left(now),
                            ),
                            device=device_text,
                            images_per_s=window_images / max(now - window_started, 1e-9),
                        )
                    )
                    loss_sum.zero_()
                    loss_count = 0
                    window_started, window_images = now, 0
        finally:
            batches.close()
        train_loss = all_reduce_mean(float(epoch_loss_sum) / max(steps_per_epoch, 1), info, device)
        train_seconds = time.perf_counter() - epoch_started

        # Validation on rank 0 (the unwrapped model: no collectives), results broadcast to every rank.
        val_started = time.perf_counter()
        val_auroc: dict[str, float | None] = {}
        val_mean = None
        values = [0.0, 0.0]
        if info.is_main:
            emit(
                TrainProgress(
                    phase="validate",
                    epoch=epoch,
                    epochs=config.epochs,
                    device=device_text,
                    total=len(data.val_ids),
                )
            )
            val_logits = predict_logits(
                model,
                data.cache,
                data.val_rows,
                device=device,
                crop=config.image_size,
                batch_size=max(per_rank_batch, 32),
                workers=workers,
            )
            val_loss = _bce(val_logits, data.y_val, pos_weight)
            val_auroc = auroc_per_class(data.y_val, _sigmoid(val_logits), FINDINGS)
            val_mean = mean_auroc(val_auroc)
            values = [val_loss, math.nan if val_mean is None else val_mean]
        val_loss, mean_or_nan = broadcast_floats(values, info, device)
        val_mean = None if math.isnan(mean_or_nan) else mean_or_nan
        clock.val_s = time.perf_counter() - val_started

        lr_used = optimizer.param_groups[0]["lr"]
        scheduler.step(val_loss)
        # Mean AUROC picks the best epoch; if no class has both outcomes in validation, the loss does.
        score = val_mean if val_mean is not None else -val_loss
        improved = best.get("score") is None or score > best["score"]
        if improved:
            best = {
                "epoch": epoch,
                "score": float(score),
                "val_loss": _finite(val_loss),
                "val_mean_auroc": val_mean,
                "val_auroc": val_auroc,
            }
            stale_epochs = 0
            if info.is_main:
                best_val_logits = val_logits
                tmp = work_dir / (BEST_WEIGHTS_FILE + ".tmp")
                save_file(_cpu_state(model), str(tmp))
                os.replace(tmp, work_dir / BEST_WEIGHTS_FILE)
        else:
            stale_epochs += 1
        seconds = time.perf_counter() - epoch_started
        history.append(
            {
                "epoch": epoch,
                "train_loss": _finite(train_loss),
                "val_loss": _finite(val_loss),
                "val_auroc": val_auroc,
                "val_mean_auroc": val_mean,
                "lr": lr_used,
                "seconds": round(seconds, 2),
                "train_seconds": round(train_seconds, 2),
                "images_per_s": round(len(order) * info.world_size / max(train_seconds, 1e-9), 2),
                "improved": improved,
            }
        )
        if info.is_main:
            _atomic_torch_save(
                {
                    "format": STATE_FORMAT,
                    "signature": signature,
                    "signature_lr": float(config.learning_rate),
                    "epoch": epoch,
                    "model": _cpu_state(model),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "history": history,
                    "best": best,
                    "stale_epochs": stale_epochs,
                    "best_val_logits": None if best_val_logits is None else torch.from_numpy(best_val_logits),
                },
                work_dir / STATE_FILE,
            )
        emit(
            TrainProgress(
                phase="epoch",
                epoch=epoch,
                epochs=config.epochs,
                step=steps_per_epoch,
                steps_per_epoch=steps_per_epoch,
                images_seen=epoch * steps_per_epoch * config.batch_size,
                loss=history[-1]["train_loss"],
                lr=lr_used,
                val_loss=_finite(val_loss),
                val_auroc=val_auroc,
                val_mean_auroc=val_mean,
                eta_s=clock.eta(0, config.epochs - epoch, steps_per_epoch, budget_left(time.perf_counter()))
                if epoch < config.epochs
                else 0.0,
                device=device_text,
                images_per_s=history[-1]["images_per_s"],
            )
        )
        barrier(info)

    artifact = None
    if info.is_main:
        artifact = _write_artifact(
            config,
            data,
            model,
            history,
            best,
            best_val_logits,
            parent,
            pos_weight,
            device_text,
            stop_reason,
            time.perf_counter() - started,
        )
        if not config.keep_work:
            shutil.rmtree(work_dir, ignore_errors=True)
        emit(
            TrainProgress(
                phase="done",
                epoch=epoch,
                epochs=config.epochs,
                val_mean_auroc=best.get("val_mean_auroc"),
                device=device_text,
                message=f"Wrote model '{artifact.name}' to {artifact.path}.",
            )
        )
    barrier(info)
    return artifact if artifact is not None else read_artifact(config.out_dir)


def _init_text(init: str, parent: str | None) -> str:
    return {"random": "random initialisation", "imagenet": "ImageNet weights"}.get(init, f"model '{parent}'")


def _write_artifact(
    config: TrainConfig,
    data: TrainData,
    model: nn.Module,
    history: list[dict[str, Any]],
    best: dict[str, Any],
    best_val_logits: np.ndarray | None,
    parent: str | None,
    pos_weight: np.ndarray | None,
    device_text: str,
    stop_reason: str | None,
    wall_seconds: float,
) -> ModelArtifact:
    """The best epoch's weights (fp16) + a card saying exactly what was done."""
    from core.metrics import image_set_fingerprint

    best_path = config.work_dir / BEST_WEIGHTS_FILE
    if best_val_logits is None or not best_path.is_file():
        raise TrainingError(
            f"The best checkpoint is missing from {config.work_dir}; train again without --resume."
        )
    model.load_state_dict(
        {k: v.to(next(model.parameters()).device) for k, v in load_file(str(best_path)).items()}
    )
    probabilities = _sigmoid(best_val_logits)
    val_auroc = auroc_per_class(data.y_val, probabilities, FINDINGS)
    chosen = youden_thresholds(data.y_val, probabilities, FINDINGS)
    # A class without both outcomes in validation (or with no useful cut-off) keeps the neutral 0.5.
    thresholds = {label: (0.5 if value is None else float(value)) for label, value in chosen.items()}
    undefined = [label for label, value in chosen.items() if value is None]
    best_epoch = int(best["epoch"])
    val_mean = mean_auroc(val_auroc)
    epochs_run = len(history)

    data_text = (
        f"{len(data.train_ids):,} training images ({data.n_train_patients:,} patients) and "
        f"{len(data.val_ids):,} validation images ({data.n_val_patients:,} patients) of {data.root.name}"
    )
    description = (
        f"DenseNet-121 (CheXNet architecture) trained from {_init_text(config.init, parent)} on {data_text}, "
        f"patient-wise split (seed {config.seed}); {epochs_run} epoch(s) at {config.image_size} px, batch "
        f"{config.batch_size}, best epoch {best_epoch} with validation mean AUROC "
        + (f"{val_mean:.3f}" if val_mean is not None else "undefined")
        + f" on {device_text}. Research use only."
    )
    if config.description:
        description = config.description.rstrip() + " " + description
    card = new_card(
        config.model_name,
        input={**default_input_spec(), "resize_shorter_side": config.cache_size, "crop": config.image_size},
        thresholds=thresholds,
        thresholds_source=(
            "Youden's J on the validation split at the best epoch"
            + (f"; 0.5 where undefined ({', '.join(undefined)})" if undefined else "")
        ),
        description=description,
        history=history,
        provenance={
            "trained_by": "core.train",
            "init": config.init,
            "parent": parent,
            "device": device_text,
            "data": {
                "folder": str(data.root),
                "description": data_text,
                "n_train_images": len(data.train_ids),
                "n_val_images": len(data.val_ids),
                "n_train_patients": data.n_train_patients,
                "n_val_patients": data.n_val_patients,
                "n_unreadable": data.n_unreadable,
                "split": {
                    "method": "core.dataset.split_patientwise",
                    "val_fraction": config.val_fraction,
                    "seed": config.seed,
                    "val_images_sha256": image_set_fingerprint(data.val_ids),
                },
            },
            "label_source": data.label_source,
            "exclusions": {"count": data.n_excluded, "sources": data.exclusion_sources},
            "hyperparameters": {
                "epochs_requested": config.epochs,
                "batch_size": config.batch_size,
                "lr": config.learning_rate,
                "optimizer": "Adam(betas=(0.9, 0.999))",
                "weight_decay": config.weight_decay,
                "scheduler": "ReduceLROnPlateau(val loss, factor 0.1, patience 1)",
                "loss": "BCEWithLogits"
                + (" with pos_weight = negatives/positives" if pos_weight is not None else ""),
                "pos_weight": None
                if pos_weight is None
                else dict(zip(FINDINGS, map(float, pos_weight), strict=True)),
                "patience": config.patience,
                "time_budget_s": config.time_budget_s,
                "image_size": config.image_size,
                "cache_size": config.cache_size,
                "augmentation": "random crop + horizontal flip (train), centre crop (validation)",
                "precision": "bf16 autocast" if device_text and "CPU" not in device_text else "fp32",
                "seed": config.seed,
            },
            "epochs": epochs_run,
            "best_epoch": best_epoch,
            "stopped_early": stop_reason is not None,
            "stop_reason": stop_reason or f"all {config.epochs} requested epochs run",
            "wall_seconds": round(wall_seconds, 1),
        },
        metrics={
            "val": {
                "split": "val",
                "n_images": len(data.val_ids),
                "epoch": best_epoch,
                "loss": best.get("val_loss"),
                "auroc": val_auroc,
                "mean_auroc": val_mean,
                "source": "core.train (validation split, centre crop from the image cache)",
            }
        },
    )
    return save_artifact(model, config.out_dir, card, half=True)


# ----------------------------------------------------------------------------------------------------
# Benchmark


def bench_training(args: Any) -> dict:
    """Training throughput at 224 px (forward + backward + Adam step, augmentation on the device).

    CPU: a small batch for a few steps (under ~2 minutes on two cores). CUDA: bf16 autocast,
    channels_last, batch >= 128. Data: synthetic 256-px uint8 batches (what the cache serves), so the
    figure is the model's speed, not the disk's. Extrapolated to one 112,120-image epoch.
    """
    from core.models import create_model

    device = resolve_device(getattr(args, "device", None) or "auto")
    cuda = device.type == "cuda"
    batch = int(getattr(args, "batch_size", None) or (256 if cuda else 8))
    if cuda:
        batch = max(batch, 128)
    images = getattr(args, "images", None)
    steps = max(2, math.ceil(images / batch)) if images else (20 if cuda else 3)
    warmup = 5 if cuda else 1
    if cuda:
        torch.backends.cudnn.benchmark = True
    model = create_model("densenet121").to(device, memory_format=torch.channels_last).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    criterion = nn.BCEWithLogitsLoss()
    generator = torch.Generator(device=device).manual_seed(0)
    source = torch.randint(
        0, 256, (batch, DEFAULT_SIZE, DEFAULT_SIZE), dtype=torch.uint8, generator=generator, device=device
    )
    targets = (torch.rand(batch, len(FINDINGS), generator=generator, device=device) < 0.1).float()

    def step() -> torch.Tensor:
        x = to_model_input(source, train=True, crop=224, generator=generator)
        return optimization_step(model, x, targets, criterion, optimizer, device)

    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    loss = torch.zeros((), device=device)
    for _ in range(steps):
        loss += step()
    float(loss)  # one sync at the end
    seconds = time.perf_counter() - started
    per_s = steps * batch / seconds
    result = {
        "benchmark": "train",
        "device": device_description(device),
        "image_size": 224,
        "batch_size": batch,
        "steps": steps,
        "warmup_steps": warmup,
        "precision": "bf16 autocast" if cuda else "fp32",
        "channels_last": True,
        "data": "synthetic 256-px uint8 batches through core.augment (random crop 224 + flip) on the device",
        "images_per_s": round(per_s, 2),
        "step_ms": round(1000 * seconds / steps, 1),
        "epoch_112k_s": round(FULL_DATASET_IMAGES / per_s, 1),
        "epoch_112k_h": round(FULL_DATASET_IMAGES / per_s / 3600, 3),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if cuda:
        result["gpu"] = torch.cuda.get_device_name(device)
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return result


def config_dict(config: TrainConfig) -> dict[str, Any]:
    """The config as JSON-friendly values (paths as strings)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}
