"""The OOD gate's inputs: pooled DenseNet features computed from exactly the predictor's model input, and
the stored gate run over files. (Fitting the gate on a dataset split is evaluation: core.evaluation.ood_fit.)

Pooled features are the 1024-vector CheXNet's classifier reads: the global average of relu(norm5 maps).
`core.imaging.preprocess.model_input` with the card's resize/crop makes the same tensor
`core.inference.predictor` feeds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from core.imaging.preprocess import model_input
from core.inference.artifact import ArtifactError, ModelArtifact, read_artifact
from core.ood.gate import OodError, OodResult, check_image, colourfulness, stored_gate
from core.prefetch import prefetch_map

Progress = Callable[[int, int], None]


def forward_with_features(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Logits [B, C], CAMs [B, C, h, w] and pooled features [B, D] from one pass: `forward_with_cam`'s
    own operations, with the pooled vector the classifier reads kept as a third output."""
    maps = model.feature_maps(x)
    pooled = torch.flatten(F.adaptive_avg_pool2d(maps, 1), 1)
    logits = model.classifier(pooled)
    cams = torch.einsum("bfhw,cf->bchw", maps, model.classifier.weight)
    return logits, cams, pooled


class FeatureOutputs(torch.nn.Module):
    """`model` with `forward_with_features` as its forward: the graph OpenVINO traces
    (core.inference.openvino_backend)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return forward_with_features(self.model, x)


def pooled_features(model: torch.nn.Module, batch: np.ndarray) -> np.ndarray:
    """float32 [B, 1024] for a model-input batch [B, 3, crop, crop] (as
    `core.imaging.preprocess.model_input`)."""
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
    from core.imaging.reader import ImageRejected, read_xray

    try:
        data = Path(path).read_bytes()
        return read_xray(data).pixels, colourfulness(data), ""
    except ImageRejected as exc:
        return None, None, str(exc)
    except OSError as exc:
        return None, None, f"The file could not be opened ({exc.strerror or exc})."


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
