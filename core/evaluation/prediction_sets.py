"""Per-image predictions of several sources on one split's images: runnable models and reference CSVs.

A source is a model folder (predicted here through `core.inference.predictor.Predictor`, images decoded
once for
all models) or a reference predictions CSV (`Image Index` + one column per finding, named like the finding
or `prob_<finding>`, as the sample's `reference_chexnet_predictions.csv`): a published model that cannot
be run, compared on the images it covers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.errors import UserError
from core.labels import FINDINGS
from core.prefetch import prefetch_map

Progress = Callable[[int, int], None]


class PredictionSetError(UserError, ValueError):
    """Predictions cannot be gathered as asked (one human sentence)."""


@dataclass
class ReferencePredictions:
    name: str
    path: Path
    probabilities: pd.DataFrame  # indexed by image index, one column per finding it has


@dataclass
class SplitPredictions:
    """Rows are `image_ids`; `probabilities[name]` is [N, len(labels)] for each source, in given order."""

    image_ids: list[str]
    labels: list[str]
    y_true: np.ndarray  # [N, len(labels)] 0/1
    probabilities: dict[str, np.ndarray]
    info: dict[str, Any] = field(default_factory=dict)
    entries: pd.DataFrame | None = None  # the dataset rows of image_ids (sex, age, view ...)


def is_reference_csv(source: str | Path) -> bool:
    return Path(source).is_file() and Path(source).suffix.lower() == ".csv"


def read_reference_csv(path: str | Path, name: str | None = None) -> ReferencePredictions:
    path = Path(path)
    try:
        table = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise PredictionSetError(f"{path.name} could not be read as a CSV file ({exc}).") from exc
    table.columns = [str(c).strip() for c in table.columns]
    if "Image Index" not in table.columns:
        raise PredictionSetError(f"{path.name} has no 'Image Index' column.")
    columns = {}
    for finding in FINDINGS:
        for candidate in (finding, f"prob_{finding}"):
            if candidate in table.columns:
                columns[candidate] = finding
                break
    if not columns:
        raise PredictionSetError(f"{path.name} has no column named after a finding (e.g. 'Effusion').")
    if table["Image Index"].duplicated().any():
        raise PredictionSetError(f"{path.name} lists some images twice.")
    probabilities = table.set_index("Image Index")[list(columns)].rename(columns=columns)
    values = probabilities.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        raise PredictionSetError(f"{path.name} has empty or non-numeric predictions.")
    return ReferencePredictions(name or path.stem, path, probabilities.astype(np.float64))


def split_predictions(
    sources: Sequence[str | Path],
    data_dir: str | Path,
    split: str = "test",
    *,
    backend: str = "auto",
    batch_size: int = 16,
    progress: Progress | None = None,
) -> SplitPredictions:
    """Every source's probabilities on the images of `split` that all reference CSVs cover.

    The split is read with the first model's card (its validation fraction and seed for "val"). Labels are
    the findings every source predicts, in `FINDINGS` order. Sources are keyed by their model name or
    CSV stem, made unique with a suffix when two share one.
    """
    from core.data.dataset import DatasetError, labels_matrix, load_chestxray14
    from core.evaluation.evaluate import EvaluationError, split_images
    from core.inference.artifact import ArtifactError, read_artifact

    if not sources:
        raise PredictionSetError("Name at least one model folder or reference CSV.")
    loaded: list[Any] = []
    try:
        for source in sources:
            loaded.append(read_reference_csv(source) if is_reference_csv(source) else read_artifact(source))
        ds = load_chestxray14(data_dir)
        models = [s for s in loaded if not isinstance(s, ReferencePredictions)]
        ids, split_info = split_images(ds, split, models[0].card if models else None)
    except (ArtifactError, DatasetError, EvaluationError) as exc:
        raise PredictionSetError(str(exc)) from exc
    names = _unique_names([s.name for s in loaded])
    covered = set(ids)
    for source in loaded:
        if isinstance(source, ReferencePredictions):
            covered &= set(source.probabilities.index)
    n_uncovered = len(ids) - len(covered)
    ids = [index for index in ids if index in covered]
    if not ids:
        raise PredictionSetError(f"No image of the {split} split has predictions from every source.")
    labels = [f for f in FINDINGS if all(f in _labels_of(s) for s in loaded)]
    if not labels:
        raise PredictionSetError("The sources predict no finding in common.")

    probabilities, n_unreadable, ids = _predict_models(models, ds, ids, labels, backend, batch_size, progress)
    out: dict[str, np.ndarray] = {}
    for name, source in zip(names, loaded, strict=True):
        if isinstance(source, ReferencePredictions):
            out[name] = source.probabilities.loc[ids, labels].to_numpy(dtype=np.float64)
        else:
            out[name] = probabilities[id(source)]
    y_true = labels_matrix(ds, ids)[:, [FINDINGS.index(f) for f in labels]].astype(np.int8)
    info = {
        "split": split,
        "split_info": split_info,
        "data_dir": str(ds.root),
        "sources": {
            name: (
                {"kind": "reference", "file": str(s.path)}
                if isinstance(s, ReferencePredictions)
                else {"kind": "model", "folder": str(s.path)}
            )
            for name, s in zip(names, loaded, strict=True)
        },  # fmt: skip
        "n_not_covered_by_references": n_uncovered,
        "n_unreadable": n_unreadable,
    }
    return SplitPredictions(ids, labels, y_true, out, info, ds.entries.loc[ids])


def _labels_of(source: Any) -> list[str]:
    if isinstance(source, ReferencePredictions):
        return list(source.probabilities.columns)
    return list(source.labels)


def _unique_names(names: list[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        candidate, n = name, 2
        while candidate in out:
            candidate, n = f"{name} ({n})", n + 1
        out.append(candidate)
    return out


def _predict_models(
    models: list[Any], ds: Any, ids: list[str], labels: list[str], backend: str, batch_size: int,
    progress: Progress | None,
) -> tuple[dict[int, np.ndarray], int, list[str]]:  # fmt: skip
    """Decode each image once and predict it with every model; unreadable images are dropped for all."""
    from core.imaging.reader import ImageRejected, read_xray_file
    from core.inference.predictor import Predictor

    if not models:
        return {}, 0, ids
    predictors = [Predictor(model, backend=backend) for model in models]
    paths = ds.image_paths(ids)

    def read(index: str) -> np.ndarray | None:
        try:
            return read_xray_file(paths[index]).pixels
        except (ImageRejected, OSError, KeyError):
            return None

    rows = {id(m): np.zeros((len(ids), len(labels))) for m in models}
    keep = np.zeros(len(ids), dtype=bool)
    images = prefetch_map(read, ids, workers=2, depth=2 * batch_size, name="compare-decode")
    for start in range(0, len(ids), batch_size):
        batch = [(start + k, next(images)) for k in range(min(batch_size, len(ids) - start))]
        readable = [(row, pixels) for row, pixels in batch if pixels is not None]
        for model, predictor in zip(models, predictors, strict=True):
            predictions = predictor.predict([pixels for _, pixels in readable], batch_size=batch_size)
            for (row, _), prediction in zip(readable, predictions, strict=True):
                rows[id(model)][row] = [prediction.probabilities[label] for label in labels]
        keep[[row for row, _ in readable]] = True
        if progress is not None:
            progress(start + len(batch), len(ids))
    if not keep.any():
        raise PredictionSetError("None of the split's images could be read.")
    return (
        {key: value[keep] for key, value in rows.items()},
        int((~keep).sum()),
        [i for i, ok in zip(ids, keep, strict=True) if ok],
    )
