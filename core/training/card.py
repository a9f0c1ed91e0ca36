"""The model a run produces: the best epoch's weights (fp16) and a card saying exactly what was done.

A card travels between machines (the registry, a shared CHEXNET_HOME, the repository's demo model), so
it names the dataset and the folder it was read from, and the files of the run by their path relative
to the dataset root (or their name), never by an absolute path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from core.data.dataset import DATASET_NAME
from core.evaluation.metrics import auroc_per_class, image_set_fingerprint, mean_auroc, youden_thresholds
from core.inference.artifact import ModelArtifact, default_input_spec, new_card, save_artifact
from core.labels import FINDINGS
from core.training.checkpoints import RunRecord, load_best_weights
from core.training.config import TrainConfig, TrainingError
from core.training.data import TrainData, file_reference
from core.training.step import OPTIMIZER_TEXT, SCHEDULER_TEXT, sigmoid

TRAINED_BY = "core.training"


def init_text(init: str, parent: str | None) -> str:
    return {"random": "random initialisation", "imagenet": "ImageNet weights"}.get(init, f"model '{parent}'")


def write_model_card(
    config: TrainConfig,
    data: TrainData,
    model: nn.Module,
    record: RunRecord,
    *,
    parent: str | None,
    pos_weight: np.ndarray | None,
    device_text: str,
    precision: str,
    stop_reason: str | None,
    wall_seconds: float,
) -> ModelArtifact:
    """Load the best epoch's weights into `model` and save it with its card to `config.out_dir`."""
    if record.best_val_logits is None:
        raise TrainingError(
            f"The best checkpoint is missing from {config.work_dir}; train again without --resume."
        )
    load_best_weights(model, config.work_dir)
    probabilities = sigmoid(record.best_val_logits)
    val_auroc = auroc_per_class(data.y_val, probabilities, FINDINGS)
    chosen = youden_thresholds(data.y_val, probabilities, FINDINGS)
    # A class without both outcomes in validation (or with no useful cut-off) keeps the neutral 0.5.
    thresholds = {label: (0.5 if value is None else float(value)) for label, value in chosen.items()}
    undefined = [label for label, value in chosen.items() if value is None]
    best_epoch = int(record.best["epoch"])
    val_mean = mean_auroc(val_auroc)
    epochs_run = len(record.history)
    settings = config.settings

    data_text = (
        f"{len(data.train_ids):,} training images ({data.n_train_patients:,} patients) and "
        f"{len(data.val_ids):,} validation images ({data.n_val_patients:,} patients) of {data.root.name}"
    )
    description = (
        f"DenseNet-121 (CheXNet architecture) trained from {init_text(config.init, parent)} on {data_text}, "
        f"patient-wise split (seed {config.settings.seed}); {epochs_run} epoch(s) at {config.image_size} px, "
        "batch "
        f"{settings.batch_size}, best epoch {best_epoch} with validation mean AUROC "
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
        # Where the thresholds came from, so they are never reported on the split they were chosen on.
        thresholds_chosen_on={
            "split": "val",
            "method": "youden",
            "n_images": len(data.val_ids),
            "images_sha256": image_set_fingerprint(data.val_ids),
            "undefined": undefined,
        },
        description=description,
        history=record.history,
        provenance={
            "trained_by": TRAINED_BY,
            "init": config.init,
            "parent": parent,
            "device": device_text,
            "data": _data_provenance(config, data, data_text),
            "label_source": data.label_source,
            "exclusions": {"count": data.n_excluded, "sources": data.exclusion_sources},
            "uncertain_labels": {"count": data.n_uncertain, "policy": settings.uncertain_policy},
            "settings": settings.to_dict(),
            "hyperparameters": _hyperparameters(config, pos_weight, precision),
            "epochs": epochs_run,
            "best_epoch": best_epoch,
            "stopped_early": stop_reason is not None,
            "stop_reason": stop_reason or f"all {settings.epochs} requested epochs run",
            "wall_seconds": round(wall_seconds, 1),
        },
        metrics={
            "val": {
                "split": "val",
                "n_images": len(data.val_ids),
                "epoch": best_epoch,
                "loss": record.best.get("val_loss"),
                "auroc": val_auroc,
                "mean_auroc": val_mean,
                "source": f"{TRAINED_BY} (validation split, centre crop from the image cache)",
            }
        },
    )
    return save_artifact(model, config.out_dir, card, half=True)


def _data_provenance(config: TrainConfig, data: TrainData, data_text: str) -> dict[str, Any]:
    def reference(path: Path | None) -> str | None:
        return None if path is None else file_reference(path, data.root)

    return {
        "dataset": DATASET_NAME,
        "folder_name": data.root.name,
        "labels_table": reference(config.labels_table),
        "exclude_list": reference(config.exclude),
        "description": data_text,
        "n_train_images": len(data.train_ids),
        "n_val_images": len(data.val_ids),
        "n_train_patients": data.n_train_patients,
        "n_val_patients": data.n_val_patients,
        "n_unreadable": data.n_unreadable,
        "split": {
            "method": "core.data.dataset.split_patientwise",
            "val_fraction": config.settings.val_fraction,
            "seed": config.settings.seed,
            "val_images_sha256": image_set_fingerprint(data.val_ids),
        },
    }


def _hyperparameters(config: TrainConfig, pos_weight: np.ndarray | None, precision: str) -> dict[str, Any]:
    """The recipe as run (the settings with their defaults resolved, plus what is fixed)."""
    settings = config.settings
    weighted = pos_weight is not None
    return {
        "epochs_requested": settings.epochs,
        "batch_size": settings.batch_size,
        "lr": config.learning_rate,
        "optimizer": OPTIMIZER_TEXT,
        "weight_decay": settings.weight_decay,
        "scheduler": SCHEDULER_TEXT,
        "loss": "BCEWithLogits" + (" with pos_weight = negatives/positives" if weighted else ""),
        "uncertain_policy": settings.uncertain_policy,
        "pos_weight": dict(zip(FINDINGS, map(float, pos_weight), strict=True)) if weighted else None,
        "patience": settings.patience,
        "time_budget_s": settings.time_budget_s,
        "image_size": config.image_size,
        "cache_size": config.cache_size,
        "augmentation": "random crop + horizontal flip (train), centre crop (validation)",
        "precision": precision,
        "seed": config.settings.seed,
    }
