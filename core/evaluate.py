"""Evaluate a model artifact on a split of a ChestX-ray14 folder: AUROC (+ CIs), operating points, curves,
and weakly-supervised localization on the images that have NIH boxes.

Images are read from their files and predicted through `core.predictor.Predictor` (the same path the app
uses), so the figures describe the model as deployed. CAMs for localization come from the same pass.

Thresholds: by default those in the model card (chosen on the validation split when training), the
honest choice for a test split; Youden's J chosen on the evaluated split itself is reported beside them
(`youden_on_this_split`, optimistic) or used as the main thresholds with `thresholds="youden"`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import UserError
from core.labels import FINDINGS
from core.prefetch import prefetch_map

SPLITS = ("test", "val", "train", "train_val", "all")
THRESHOLD_MODES = ("validation", "youden")
Progress = Callable[[int, int], None]


class EvaluationError(UserError, RuntimeError):
    """The evaluation cannot run as asked (one human sentence)."""


def split_images(ds: Any, split: str, card: dict[str, Any] | None = None) -> tuple[list[str], dict[str, Any]]:
    """The image indexes of `split` and how they were chosen.

    test / train_val: the official lists. val / train: `split_patientwise` with the model card's
    validation fraction and seed (defaults 0.1 and 0 for models without them), so "val" is the very
    validation split the model was trained against; `matches_training` says whether its fingerprint
    equals the one in the card. all: every image present.
    """
    from core.dataset import split_patientwise
    from core.metrics import image_set_fingerprint

    if split not in SPLITS:
        raise EvaluationError(f"Unknown split '{split}': use one of {', '.join(SPLITS)}.")
    entries = ds.entries
    if split == "all":
        return sorted(entries.index), {"method": "every image in the folder"}
    if split in ("test", "train_val"):
        return sorted(entries.index[(entries["split"] == split).to_numpy()]), {
            "method": f"official {split} list"
        }
    recipe = ((card or {}).get("provenance") or {}).get("data", {}).get("split") or {}
    val_fraction = float(recipe.get("val_fraction", 0.1))
    seed = int(recipe.get("seed", 0))
    ids = split_patientwise(ds, val_fraction, seed)[split]
    info: dict[str, Any] = {
        "method": "core.dataset.split_patientwise",
        "val_fraction": val_fraction,
        "seed": seed,
    }
    if split == "val" and recipe.get("val_images_sha256"):
        info["matches_training"] = image_set_fingerprint(ids) == recipe["val_images_sha256"]
    return ids, info


def _read_images(paths: Sequence[str], workers: int = 2) -> Iterator[np.ndarray | str]:
    """Grey uint8 pixels of each file in order (or the sentence saying why it was refused), decoded a few
    files ahead on threads; bounded so a 25,000-image split is never all in memory."""
    from core.imaging import ImageRejected, read_xray_file

    def read(path: str) -> np.ndarray | str:
        try:
            return read_xray_file(path).pixels
        except ImageRejected as exc:
            return str(exc)
        except OSError as exc:
            return f"The file could not be opened ({exc.strerror or exc})."

    yield from prefetch_map(read, paths, workers=workers, depth=workers * 4, name="decode")


def evaluate(
    model_dir: str | Path,
    data_dir: str | Path,
    split: str = "test",
    labels_table: str | Path | None = None,
    progress: Progress | None = None,
    *,
    n_boot: int = 1000,
    thresholds: str = "validation",
    backend: str = "auto",
    device: str | None = None,
    batch_size: int = 16,
    seed: int = 0,
    exclude: str | Path | None = None,
) -> dict[str, Any]:
    """Predict every image of `split` and return `core.metrics.evaluation_report` plus localization.

    `progress(done, total)` follows the images predicted. `labels_table`: a CSV of corrected labels
    (image_index + 14 findings, optional exclude column) overriding the NLP labels; excluded images (and
    those listed in `exclude`) are left out and counted.
    """
    from core.artifact import ArtifactError, read_artifact
    from core.dataset import (
        DatasetError,
        apply_exclusions,
        labels_matrix,
        load_chestxray14,
        read_image_list,
        read_labels_table,
    )
    from core.localization import localization_report
    from core.metrics import evaluation_report, precision_recall_f1_at, to_jsonable, youden_thresholds
    from core.predictor import Predictor

    if thresholds not in THRESHOLD_MODES:
        raise EvaluationError(f"Unknown thresholds '{thresholds}': use {' or '.join(THRESHOLD_MODES)}.")
    started = time.perf_counter()
    try:
        artifact = read_artifact(model_dir)
        ds = load_chestxray14(data_dir)
        ids, split_info = split_images(ds, split, artifact.card)
        table, excluded = (None, set())
        if labels_table is not None:
            table, excluded = read_labels_table(Path(labels_table))
        if exclude is not None:
            excluded |= read_image_list(exclude)
        kept = apply_exclusions(ids, excluded)
        n_excluded = len(ids) - len(kept)
        ids = kept
        if not ids:
            raise EvaluationError(f"The {split} split of {ds.root} has no images to evaluate.")
        unknown = [label for label in artifact.labels if label not in FINDINGS]
        if unknown:
            raise EvaluationError(
                f"The model predicts labels ChestX-ray14 does not have: {', '.join(unknown)}."
            )
        columns = [FINDINGS.index(label) for label in artifact.labels]
        y_true = labels_matrix(ds, ids, table)[:, columns]
        predictor = Predictor(artifact, backend=backend, device=device)
    except (ArtifactError, DatasetError) as exc:
        raise EvaluationError(str(exc)) from exc

    paths = ds.image_paths(ids)
    boxes = ds.boxes[ds.boxes["image_index"].isin(set(ids))]
    boxes_by_image = {index: group for index, group in boxes.groupby("image_index")}
    probabilities = np.zeros((len(ids), len(artifact.labels)), dtype=np.float64)
    # (label, prediction, box): a Prediction holds the small model-space CAMs; each is upsampled to its
    # image only while scored, so thousands of boxed 1024-px images never sit in memory as full CAMs.
    box_items: list[tuple[str, Any, tuple[float, float, float, float]]] = []
    unreadable: dict[str, str] = {}
    keep = np.ones(len(ids), dtype=bool)
    images = _read_images([str(paths[i]) for i in ids])
    try:
        _predict_all(ids, images, predictor, batch_size, artifact.labels, boxes_by_image, probabilities,
                     box_items, unreadable, keep, progress)  # fmt: skip
    finally:
        images.close()
    if not keep.any():
        raise EvaluationError(f"None of the {len(ids)} images of the {split} split could be read.")
    ids = [index for index, ok in zip(ids, keep, strict=True) if ok]
    y_true, probabilities = y_true[keep], probabilities[keep]

    localization = None
    if box_items:
        localization = localization_report(_upsampled(box_items))
    card_thresholds = artifact.thresholds
    youden = youden_thresholds(y_true, probabilities, artifact.labels)
    main_thresholds = card_thresholds if thresholds == "validation" else None
    report = evaluation_report(
        y_true, probabilities, artifact.labels, model_name=artifact.name, split=split, image_ids=ids,
        n_boot=n_boot, seed=seed, thresholds=main_thresholds, localization=localization,
    )  # fmt: skip
    other = card_thresholds if thresholds == "youden" else youden
    at_other = precision_recall_f1_at(y_true, probabilities, other, artifact.labels)
    other_key = "model_card_thresholds" if thresholds == "youden" else "youden_on_this_split"
    report[other_key] = {
        key: at_other[key]
        for key in ("thresholds", "precision", "recall", "f1", "mean_precision", "mean_recall", "mean_f1")
    }
    report.update(
        thresholds_source=(
            "model card (" + str(artifact.card.get("thresholds_source") or "as stored") + ")"
            if thresholds == "validation"
            else "Youden's J on this split (optimistic)"
        ),
        thresholds_mode=thresholds,
        model_dir=str(artifact.path),
        data_dir=str(ds.root),
        split_info=split_info,
        labels_source=(
            f"labels table {Path(labels_table).name}"
            if labels_table
            else f"NLP labels of {ds.data_entry_name}"
        ),
        n_excluded=n_excluded,
        n_unreadable=len(unreadable),
        n_localization_boxes=len(box_items),
        backend=predictor.backend.name,
        seconds=round(time.perf_counter() - started, 2),
    )
    return to_jsonable(report)


def _predict_all(
    ids: list[str],
    images: Iterator[np.ndarray | str],
    predictor: Any,
    batch_size: int,
    labels: tuple[str, ...],
    boxes_by_image: dict[str, Any],
    probabilities: np.ndarray,
    box_items: list,
    unreadable: dict[str, str],
    keep: np.ndarray,
    progress: Progress | None,
) -> None:
    """Fill `probabilities` (rows in `ids` order), `box_items`, `unreadable` and `keep` batch by batch."""
    done = 0
    for start in range(0, len(ids), batch_size):
        chunk_ids = ids[start : start + batch_size]
        pixels, positions = [], []
        for offset, index in enumerate(chunk_ids):
            image = next(images)
            if isinstance(image, str):
                unreadable[index] = image
                keep[start + offset] = False
            else:
                pixels.append(image)
                positions.append(start + offset)
        predictions = predictor.predict(pixels, batch_size=batch_size) if pixels else []
        for position, prediction in zip(positions, predictions, strict=True):
            probabilities[position] = [prediction.probabilities[label] for label in labels]
            group = boxes_by_image.get(ids[position])
            for row in group.itertuples() if group is not None else ():
                if row.label in labels:
                    box_items.append((row.label, prediction, (row.x_img, row.y_img, row.w_img, row.h_img)))
        done += len(chunk_ids)
        if progress is not None:
            progress(done, len(ids))


def _upsampled(box_items: list) -> Iterator[tuple[str, np.ndarray, tuple[float, float, float, float]]]:
    for label, prediction, box in box_items:
        yield label, prediction.cam(label), box


def card_metrics_entry(report: dict[str, Any]) -> dict[str, Any]:
    """The compact part of a report that belongs in a model card's `metrics` (no curves)."""
    from core.dataset import DATASET_NAME

    keys = (
        "split",
        "n_images",
        "auroc",
        "mean_auroc",
        "auroc_ci",
        "mean_auroc_ci",
        "thresholds_source",
        "mean_precision",
        "mean_recall",
        "image_set_sha256",
        "split_info",
        "labels_source",
    )
    entry = {key: report.get(key) for key in keys}
    # A card travels between machines: the dataset by name, never the absolute folder of this one.
    if report.get("data_dir"):
        entry.update(dataset=DATASET_NAME, folder_name=Path(report["data_dir"]).name)
    overall = (report.get("localization") or {}).get("overall")
    if overall:
        entry["localization"] = {
            "n_boxes": overall["n_boxes"],
            "iobb_accuracy": overall["iobb_accuracy"],
            "pointing_accuracy": overall["pointing_accuracy"],
        }
    entry["source"] = "core.evaluate (images read from files, predicted through core.predictor)"
    return entry
