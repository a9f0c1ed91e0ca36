"""The evaluation of images imported from a PACS (issue 18), reported beside the dataset's splits.

Imported images have no NLP label and no place in the official split, so they form their own evaluation
set, "pacs": the imported images that readers labelled (their effective label in `reviewed_labels`:
consensus or adjudication; images the readers excluded are left out), predicted by the model and reported
with the model card's thresholds like a test split. It lands in `metrics["evaluations"]["reviewed"]["pacs"]`
and the Models & ROC page shows it under the split "PACS imports".
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.evaluation.prediction_store import StoredSplit
from core.labels import FINDINGS
from db.models import FINDING_COLUMNS, Image, PacsInstance, ReviewedLabel
from jobs.batch_predict import Batch, predict_batches

PACS_SPLIT = "pacs"
BATCH_SIZE = 16
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class LabelledImports:
    image_ids: list[int]
    paths: list[str]
    truth: np.ndarray  # (images, 14) int8, FINDINGS order


@dataclass(frozen=True)
class ImportsEvaluation:
    report: dict[str, Any]
    stored: StoredSplit  # the per-image probabilities and labels, for paired comparisons


def labelled_imports(session: Session) -> LabelledImports:
    """Every imported image with a readers' label, in id order (one query)."""
    columns = [getattr(ReviewedLabel, column) for column in FINDING_COLUMNS]
    query = (
        select(Image.id, Image.path, *columns)
        .join(PacsInstance, PacsInstance.image_id == Image.id)
        .join(ReviewedLabel, ReviewedLabel.image_id == Image.id)
        .where(PacsInstance.status == "imported", ReviewedLabel.exclude.is_(False), Image.path.is_not(None))
        .order_by(Image.id)
    )
    rows = session.execute(query).all()
    truth = np.array([row[2:] for row in rows], dtype=np.int8).reshape(len(rows), len(FINDINGS))
    return LabelledImports([row[0] for row in rows], [row[1] for row in rows], truth)


def _batches(paths: list[str], unreadable: list[int]) -> Iterator[Batch]:
    from core.imaging.reader import read_xray
    from core.imaging.xray_image import ImageRejected

    pixels: list[np.ndarray] = []
    keys: list[int] = []
    consumed = 0
    for index, path in enumerate(paths):
        consumed += 1
        try:
            pixels.append(read_xray(Path(path).read_bytes()).pixels)
            keys.append(index)
        except (OSError, ImageRejected):
            unreadable.append(index)  # the file went missing or was damaged since the import
        if len(pixels) == BATCH_SIZE:
            yield Batch(pixels, consumed, keys)
            pixels, keys, consumed = [], [], 0
    if consumed:
        yield Batch(pixels, consumed, keys)


def evaluate_imports(
    predictor: Any,
    imports: LabelledImports,
    *,
    model_name: str,
    n_boot: int,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ImportsEvaluation | None:
    """The "pacs" report of `predictor` on the labelled imports; None without any readable one."""
    from core.evaluation.metrics import evaluation_report

    labels = [label for label in predictor.labels if label in FINDINGS]  # the model's own label list
    columns = [FINDINGS.index(label) for label in labels]
    unreadable: list[int] = []
    probabilities = np.zeros((len(imports.paths), len(labels)), dtype=np.float32)
    done = np.zeros(len(imports.paths), dtype=bool)
    total = len(imports.paths)
    on_done = (lambda n: progress(n, total)) if progress else None
    batches = _batches(imports.paths, unreadable)
    for batch, predictions in predict_batches(
        predictor, batches, check_ood=False, on_done=on_done, should_stop=should_stop
    ):
        for index, prediction in zip(batch.keys, predictions, strict=True):
            probabilities[index] = [prediction.probabilities[label] for label in labels]
            done[index] = True
    if not done.any():
        return None
    ids = [f"image-{image_id}" for image_id, ok in zip(imports.image_ids, done, strict=True) if ok]
    truth = imports.truth[done][:, columns]
    report = evaluation_report(
        truth, probabilities[done], labels, model_name=model_name, split=PACS_SPLIT, image_ids=ids,
        n_boot=n_boot, thresholds={label: predictor.thresholds[label] for label in labels},
    )  # fmt: skip
    report["labels_source"] = "readers' labels of images imported from a PACS"
    report["thresholds_source"] = "the model card's thresholds"
    report["n_unreadable"] = len(unreadable)
    # Stored like a split's predictions, so versions can be compared on the same imports (DeLong).
    stored = StoredSplit(PACS_SPLIT, ids, tuple(labels), probabilities[done], truth={"reviewed": truth})
    return ImportsEvaluation(report, stored)
