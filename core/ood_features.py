"""The OOD gate's inputs: pooled DenseNet features computed from exactly the predictor's model input, the
gate fitted on a dataset split, and the gate run over files.

Pooled features are the 1024-vector CheXNet's classifier reads: the global average of relu(norm5 maps).
`core.preprocess.model_input` with the card's resize/crop makes the same tensor `core.predictor` feeds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from core.artifact import ArtifactError, ModelArtifact, read_artifact
from core.ood import OodError, OodGate, OodResult, check_image, colourfulness, stored_gate
from core.prefetch import prefetch_map
from core.preprocess import model_input

Progress = Callable[[int, int], None]
ADULT_AGE = 18
FRONTAL_VIEWS = ("PA", "AP")


def forward_with_features(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Logits [B, C], CAMs [B, C, h, w] and pooled features [B, D] from one pass: `forward_with_cam`'s
    own operations, with the pooled vector the classifier reads kept as a third output."""
    maps = model.feature_maps(x)
    pooled = torch.flatten(F.adaptive_avg_pool2d(maps, 1), 1)
    logits = model.classifier(pooled)
    cams = torch.einsum("bfhw,cf->bchw", maps, model.classifier.weight)
    return logits, cams, pooled


class FeatureOutputs(torch.nn.Module):
    """`model` with `forward_with_features` as its forward: the graph OpenVINO traces (core.ov_backend)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return forward_with_features(self.model, x)


def pooled_features(model: torch.nn.Module, batch: np.ndarray) -> np.ndarray:
    """float32 [B, 1024] for a model-input batch [B, 3, crop, crop] (as `core.preprocess.model_input`)."""
    with torch.inference_mode():
        maps = model.feature_maps(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
        return torch.flatten(F.adaptive_avg_pool2d(maps, 1), 1).float().numpy()


class FeatureExtractor:
    """One model loaded once; `features(images)` for grey uint8 images of any size."""

    def __init__(self, artifact: ModelArtifact):
        self.artifact = artifact
        self.resize, self.crop = artifact.resize, artifact.crop
        self.model = artifact.load_model("cpu")

    def features(
        self, images: Sequence[np.ndarray], batch_size: int = 16, progress: Progress | None = None
    ) -> np.ndarray:
        out = np.zeros((len(images), self.model.classifier.in_features), dtype=np.float32)
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            batch = np.stack([model_input(img, self.resize, self.crop) for img in chunk])
            out[start : start + len(chunk)] = pooled_features(self.model, batch)
            if progress is not None:
                progress(start + len(chunk), len(images))
        return out


def read_grey(path: str | Path) -> tuple[np.ndarray | None, float | None, str]:
    """(grey pixels, colourfulness, "") of an X-ray file, or (None, None, why it was refused)."""
    from core.imaging import ImageRejected, read_xray

    try:
        data = Path(path).read_bytes()
        return read_xray(data).pixels, colourfulness(data), ""
    except ImageRejected as exc:
        return None, None, str(exc)
    except OSError as exc:
        return None, None, f"The file could not be opened ({exc.strerror or exc})."


def fitting_images(
    data_dir: str | Path,
    split: str = "train_val",
    card: dict[str, Any] | None = None,
    min_age: int = ADULT_AGE,
) -> tuple[list[str], Any, dict[str, Any]]:
    """The image indexes of `split` that the gate learns from: adult frontal films. (ids, dataset, info)."""
    from core.dataset import DatasetError, load_chestxray14
    from core.evaluate import EvaluationError, split_images

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


def screen_files(
    model_dir: str | Path, files: Sequence[str | Path], batch_size: int = 8, progress: Progress | None = None
) -> Iterator[tuple[str, OodResult | None, str]]:
    """(file, result, "") per file, or (file, None, why the file was refused), in order."""
    try:
        artifact = read_artifact(model_dir)
    except ArtifactError as exc:
        raise OodError(str(exc)) from exc
    gate = stored_gate(artifact)
    extractor = FeatureExtractor(artifact) if gate is not None else None
    decoded = prefetch_map(read_grey, [str(f) for f in files], workers=2, depth=2 * batch_size, name="ood")
    done = 0
    for start in range(0, len(files), batch_size):
        chunk = [(str(f), next(decoded)) for f in files[start : start + batch_size]]
        readable = [pixels for _, (pixels, _, _) in chunk if pixels is not None]
        features = extractor.features(readable, batch_size) if extractor and readable else None
        row = 0
        for file, (pixels, colour, error) in chunk:
            if pixels is None:
                yield file, None, error
                continue
            yield file, check_image(gate, pixels, None if features is None else features[row], colour), ""
            row += 1
        done += len(chunk)
        if progress is not None:
            progress(done, len(files))
