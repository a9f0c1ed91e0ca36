"""A run's data: the patient-wise split, labels and exclusions, the filled image cache, and the batches.

Images come only from the uint8 cache (`core.data.cache`), one `cache_size` px square per image; the
training device crops and augments them (`core.data.augment`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from core.data.cache import CacheError, ImageCache, build_cache, default_cache_folder
from core.data.dataset import (
    DatasetError,
    apply_exclusions,
    labels_matrix,
    load_chestxray14,
    read_image_list,
    read_labels_table,
    split_patientwise,
)
from core.labels import FINDINGS
from core.prefetch import prefetch_map
from core.training.config import ProgressCallback, TrainConfig, TrainingError, TrainProgress


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
    n_uncertain: int = 0  # labels a reader marked Uncertain (trained as settings.uncertain_policy says)


def file_reference(path: Path, root: Path) -> str:
    """How a card names a file of the run: its path relative to the dataset root when it lies inside,
    else its name (never an absolute path, which means nothing on another machine)."""
    path, root = Path(path).resolve(), Path(root).resolve()
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name


def prepare_data(
    config: TrainConfig,
    progress: ProgressCallback | None = None,
    build: bool = True,
) -> TrainData:
    """Read the dataset, split it patient-wise, apply exclusions and (with `build`) fill the cache.

    With `build=False` the cache is only opened (ranks > 0 of a multi-GPU run, after rank 0 built it).
    """
    settings = config.settings
    try:
        ds = load_chestxray14(config.data_dir)
        splits = split_patientwise(ds, settings.val_fraction, config.settings.seed)
        table, excluded = (None, set())
        sources: list[str] = []
        if config.labels_table is not None:
            table, excluded = read_labels_table(config.labels_table)
            if excluded:
                sources.append(f"{file_reference(config.labels_table, ds.root)} (exclude column)")
        if config.exclude is not None:
            excluded |= read_image_list(config.exclude)
            sources.append(file_reference(config.exclude, ds.root))
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
        n_uncertain = 0
        if config.labels_table is not None:
            policy = settings.uncertain_policy
            uncertain_train = uncertain_matrix(config.labels_table, train_ids)
            uncertain_val = uncertain_matrix(config.labels_table, val_ids)
            n_uncertain = int(uncertain_train.sum() + uncertain_val.sum())
            # "ignore": a target of -1, which the loss leaves out (step.MaskedBCEWithLogits).
            y_train[uncertain_train] = {"ignore": -1.0, "negative": 0.0, "positive": 1.0}[policy]
            y_val[uncertain_val] = 1.0 if policy == "positive" else 0.0
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
            f"labels table {file_reference(config.labels_table, ds.root)} (NLP labels for images it "
            "does not list)"
            if config.labels_table is not None
            else f"NLP labels of {ds.data_entry_name}"
        ),
        n_excluded=n_excluded,
        exclusion_sources=sources,
        n_unreadable=n_unreadable,
        n_uncertain=n_uncertain,
    )


def uncertain_matrix(path: Path, image_indexes: list[str]) -> np.ndarray:
    """bool [N, 14]: the findings the labels table's optional `uncertain` column ("A|B") names per image
    (the reviewers marked them Uncertain); all False without the column."""
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DatasetError(f"Cannot read the labels table {Path(path).name}: {exc}.") from exc
    mask = np.zeros((len(image_indexes), len(FINDINGS)), dtype=bool)
    index_column = "image_index" if "image_index" in table.columns else "Image Index"
    if "uncertain" not in table.columns or index_column not in table.columns:
        return mask
    listed = table.loc[table["uncertain"].str.strip() != "", [index_column, "uncertain"]]
    named = dict(zip(listed[index_column].str.strip(), listed["uncertain"], strict=True))
    for row, image_index in enumerate(image_indexes):
        for finding in filter(None, named.get(image_index, "").split("|")):
            if finding.strip() not in FINDINGS:
                raise DatasetError(f"The labels table names an unknown Uncertain finding {finding!r}.")
            mask[row, FINDINGS.index(finding.strip())] = True
    return mask


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
