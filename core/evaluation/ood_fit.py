"""Fitting the OOD gate on a dataset split: the adult frontal films of the split the model learned from.

Evaluation-level: it chooses images by split (core.evaluation.evaluate.split_images) and reads the dataset;
the features come from inference (core.inference.features), the gate itself from core.ood.gate.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from core.inference.artifact import ArtifactError, read_artifact
from core.inference.features import FeatureExtractor, read_grey
from core.ood.gate import OodError, OodGate
from core.prefetch import prefetch_map

Progress = Callable[[int, int], None]
ADULT_AGE = 18
FRONTAL_VIEWS = ("PA", "AP")


def fitting_images(
    data_dir: str | Path,
    split: str = "train_val",
    card: dict[str, Any] | None = None,
    min_age: int = ADULT_AGE,
) -> tuple[list[str], Any, dict[str, Any]]:
    """The image indexes of `split` that the gate learns from: adult frontal films. (ids, dataset, info)."""
    from core.data.dataset import DatasetError, load_chestxray14
    from core.evaluation.evaluate import EvaluationError, split_images

    try:
        ds = load_chestxray14(data_dir)
        ids, split_info = split_images(ds, split, card)
    except (DatasetError, EvaluationError) as exc:
        raise OodError(str(exc)) from exc
    entries = ds.entries.loc[ids]
    keep = (entries["age"].fillna(-1).to_numpy() >= min_age) & entries["view"].isin(FRONTAL_VIEWS).to_numpy()
    kept = [index for index, ok in zip(ids, keep, strict=True) if ok]
    info = {
        "split": split,
        "split_info": split_info,
        "dataset": ds.root.name,  # the folder's name only: the card ships, a server path must not
        "min_age": min_age,
        "n_left_out_not_adult_frontal": len(ids) - len(kept),
    }
    return kept, ds, info


def fit_gate(
    model_dir: str | Path,
    data_dir: str | Path,
    split: str = "train_val",
    *,
    min_age: int = ADULT_AGE,
    max_images: int | None = None,
    batch_size: int = 16,
    seed: int = 0,
    progress: Progress | None = None,
) -> OodGate:
    """Fit the gate of the model in `model_dir` on the adult frontal images of `split` (not stored)."""
    try:
        artifact = read_artifact(model_dir)
    except ArtifactError as exc:
        raise OodError(str(exc)) from exc
    ids, ds, info = fitting_images(data_dir, split, artifact.card, min_age)
    if max_images is not None and len(ids) > max_images:
        ids = sorted(np.random.default_rng(seed).choice(ids, max_images, replace=False).tolist())
    paths = ds.image_paths(ids)
    extractor = FeatureExtractor(artifact)
    images, kept = [], []
    decoded = prefetch_map(read_grey, [paths[i] for i in ids], workers=2, depth=8, name="ood-decode")
    for index, (pixels, _, _) in zip(ids, decoded, strict=True):
        if pixels is not None:
            images.append(pixels)
            kept.append(index)
    features = extractor.features(images, batch_size, progress)
    info.update(
        model=artifact.name, weights_sha256=artifact.weights_digest(), n_unreadable=len(ids) - len(kept)
    )
    return OodGate.fit(
        features, images, groups=ds.entries.loc[kept, "patient_id"].tolist(), resize=extractor.resize,
        crop=extractor.crop, seed=seed, source=info,
    )  # fmt: skip
