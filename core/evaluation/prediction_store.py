"""Per-image probabilities an evaluation stored, and the paired comparisons made from them.

An evaluation keeps, per split, the images it predicted, their probabilities (float32) and each label
source's labels (int8) and included images in one compressed .npz (about 1 MB per 10,000 images), so two
versions evaluated on the same images, or a version and a reference predictions CSV, can be compared with
DeLong's test without running either model again. Labels are taken from version B (the candidate) and
the number of common images whose labels differ between the two files is reported.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import UserError

FORMAT_VERSION = 1


class PredictionStoreError(UserError, ValueError):
    """Stored predictions that cannot be read or compared as asked (one human sentence)."""


@dataclass
class StoredSplit:
    """One split of one model: rows are `ids`; `truth[source]` [N, C] and `included[source]` [N]."""

    split: str
    ids: list[str]
    labels: tuple[str, ...]
    probabilities: np.ndarray  # [N, C] float32
    truth: dict[str, np.ndarray] = field(default_factory=dict)
    included: dict[str, np.ndarray] = field(default_factory=dict)

    def rows(self, source: str) -> np.ndarray:
        if source not in self.truth:
            raise PredictionStoreError(f"No stored {source} labels for the {self.split} split.")
        return self.included.get(source, np.ones(len(self.ids), dtype=bool))


def save_stored(path: str | Path, splits: Mapping[str, StoredSplit]) -> Path:
    """Write every split to one compressed .npz, atomically (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {"format_version": np.array(FORMAT_VERSION)}
    for split, stored in splits.items():
        arrays[f"{split}__ids"] = np.asarray(stored.ids, dtype=str)
        arrays[f"{split}__labels"] = np.asarray(stored.labels, dtype=str)
        arrays[f"{split}__probabilities"] = np.asarray(stored.probabilities, dtype=np.float32)
        for source, truth in stored.truth.items():
            arrays[f"{split}__truth__{source}"] = np.asarray(truth, dtype=np.int8)
            arrays[f"{split}__included__{source}"] = np.asarray(stored.rows(source), dtype=bool)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".npz", dir=path.parent)
    os.close(handle)
    try:
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_stored(path: str | Path) -> dict[str, StoredSplit]:
    """split -> StoredSplit of a file written by `save_stored`."""
    try:
        with np.load(Path(path), allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError) as exc:
        raise PredictionStoreError(
            f"The stored predictions {Path(path).name} cannot be read ({exc})."
        ) from exc
    splits: dict[str, StoredSplit] = {}
    for key in arrays:
        if key.endswith("__ids"):
            split = key.removesuffix("__ids")
            stored = StoredSplit(split, arrays[key].tolist(), tuple(arrays[f"{split}__labels"].tolist()),
                                 arrays[f"{split}__probabilities"])  # fmt: skip
            prefix = f"{split}__truth__"
            for name in (k for k in arrays if k.startswith(prefix)):
                source = name.removeprefix(prefix)
                stored.truth[source] = arrays[name]
                stored.included[source] = arrays[f"{split}__included__{source}"]
            splits[split] = stored
    return splits


def reference_split(probabilities: Any, like: StoredSplit, name: str = "reference") -> StoredSplit:
    """A reference's probabilities (a DataFrame indexed by image index, columns = findings) on the images
    of `like` it covers, with `like`'s labels: a non-runnable model compared where it has predictions."""
    covered = [i for i, index in enumerate(like.ids) if index in probabilities.index]
    if not covered:
        raise PredictionStoreError(f"{name} has no prediction for any image of the {like.split} split.")
    labels = tuple(label for label in like.labels if label in probabilities.columns)
    if not labels:
        raise PredictionStoreError(f"{name} predicts none of the model's findings.")
    columns = [like.labels.index(label) for label in labels]
    ids = [like.ids[i] for i in covered]
    return StoredSplit(
        like.split,
        ids,
        labels,
        probabilities.loc[ids, list(labels)].to_numpy(dtype=np.float32),
        {source: truth[covered][:, columns] for source, truth in like.truth.items()},
        {source: like.rows(source)[covered] for source in like.truth},
    )


def compare_stored(
    a: StoredSplit, b: StoredSplit, source: str = "nlp", *, min_positives: int = 10
) -> dict[str, Any]:
    """`core.evaluation.compare.compare_predictions` of A and B on the images both include; delta = B - A."""
    from core.evaluation.compare import compare_predictions

    labels = [label for label in b.labels if label in a.labels]
    if not labels:
        raise PredictionStoreError("The two have no finding in common.")
    rows_a = {index: row for row, index in enumerate(a.ids) if a.rows(source)[row]}
    common = [
        (rows_a[index], row) for row, index in enumerate(b.ids) if b.rows(source)[row] and index in rows_a
    ]
    if not common:
        raise PredictionStoreError(f"The two share no image of the {b.split} split.")
    ra, rb = (np.array(side) for side in zip(*common, strict=True))
    ca, cb = [a.labels.index(label) for label in labels], [b.labels.index(label) for label in labels]
    y_a, y_b = a.truth[source][ra][:, ca], b.truth[source][rb][:, cb]
    result = compare_predictions(y_b, a.probabilities[ra][:, ca], b.probabilities[rb][:, cb], labels,
                                 min_positives=min_positives)  # fmt: skip
    result.update(
        split=b.split,
        labels_source=source,
        labels_from="B",
        n_label_differences=int((y_a != y_b).any(axis=1).sum()),
        n_only_a=len(rows_a) - len(common),
        n_only_b=int(b.rows(source).sum()) - len(common),
    )
    return result


def significantly_worse(comparison: dict[str, Any], alpha: float = 0.05) -> list[str]:
    """Findings where B is worse than A after Holm's adjustment (p_holm < alpha and delta < 0)."""
    return [
        label
        for label, row in comparison.get("classes", {}).items()
        if row.get("p_holm") is not None and row["p_holm"] < alpha and row["delta"] < 0
    ]
