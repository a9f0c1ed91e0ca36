"""Evaluate a model artifact on a split of a ChestX-ray14 folder: AUROC (+ CIs), operating points, curves,
and weakly-supervised localization on the images that have NIH boxes.

Images are read from their files and predicted through `core.inference.predictor.Predictor` (the same path
the app
uses), so the figures describe the model as deployed. CAMs for localization come from the same pass.
`predict_split` is that pass and `split_report` one report made from it without inference, so a split is
predicted once however many label sources it is reported against (`core.evaluation.suite`).

Thresholds: by default those in the model card (chosen on the validation split when training), the
honest choice for a test split; Youden's J chosen on the evaluated split itself is reported beside them
(`youden_on_this_split`, optimistic) or used as the main thresholds with `thresholds="youden"`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.errors import UserError
from core.labels import FINDINGS
from core.prefetch import prefetch_map

if TYPE_CHECKING:
    import pandas as pd

SPLITS = ("test", "val", "train", "train_val", "all")
THRESHOLD_MODES = ("validation", "youden")
MIN_POSITIVES = 10  # fewer positives: the finding's AUROC is marked too few and left out of the mean
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
    from core.data.dataset import split_patientwise
    from core.evaluation.metrics import image_set_fingerprint

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
        "method": "core.data.dataset.split_patientwise",
        "val_fraction": val_fraction,
        "seed": seed,
    }
    if split == "val" and recipe.get("val_images_sha256"):
        info["matches_training"] = image_set_fingerprint(ids) == recipe["val_images_sha256"]
    return ids, info


def _read_images(
    paths: Sequence[str], workers: int = 2, cache: Any = None, originals: frozenset[str] = frozenset()
) -> Iterator[np.ndarray | str]:
    """Grey uint8 pixels of each file in order (or the sentence saying why it was refused), decoded a few
    files ahead on threads; bounded so a 25,000-image split is never all in memory. A file in `cache`
    (a core.data.cache.ImageCache keyed by path, at the model's resize) is read from it, unless it is in
    `originals`: its CAM is compared with boxes drawn on the original."""
    from core.imaging.reader import ImageRejected, read_xray_file

    def read(path: str) -> np.ndarray | str:
        if cache is not None and path in cache and path not in originals:
            return np.array(cache.get(path))  # the model's own input: same probabilities, no decoding
        try:
            return read_xray_file(path).pixels
        except ImageRejected as exc:
            return str(exc)
        except OSError as exc:
            return f"The file could not be opened ({exc.strerror or exc})."

    yield from prefetch_map(read, paths, workers=workers, depth=workers * 4, name="decode")


@dataclass(frozen=True)
class LabelSource:
    """The labels a report is made against: Data_Entry's NLP labels (`table` None) or a labels table."""

    table: pd.DataFrame | None = None
    excluded: frozenset[str] = frozenset()
    description: str | None = None  # None: "NLP labels of <Data_Entry file>"


def read_label_source(labels_table: str | Path | None = None) -> LabelSource:
    """A labels table CSV (image_index + 14 findings, optional exclude column), or the NLP labels."""
    from core.data.dataset import DatasetError, read_labels_table

    if labels_table is None:
        return LabelSource()
    try:
        table, excluded = read_labels_table(Path(labels_table))
    except DatasetError as exc:
        raise EvaluationError(str(exc)) from exc
    return LabelSource(table, frozenset(excluded), f"labels table {Path(labels_table).name}")


@dataclass
class SplitPass:
    """One inference pass over a split: every label source's report of the split reuses it."""

    split: str
    split_info: dict[str, Any]
    labels: tuple[str, ...]
    ids: list[str]  # the images predicted, in order
    probabilities: np.ndarray  # [len(ids), len(labels)]
    # (image index, label, prediction, box): a Prediction holds the small model-space CAMs; each is
    # upsampled to its image only while scored, so thousands of boxed images never sit in memory as CAMs.
    box_items: list[tuple[str, str, Any, tuple[float, float, float, float]]]
    unreadable: dict[str, str]
    n_excluded: int  # left out before the pass (exclusions every report shares)
    model_name: str
    model_dir: Path
    card: dict[str, Any] = field(repr=False)
    data_dir: Path = Path()
    data_entry_name: str = ""
    backend: str = ""
    seconds: float = 0.0


def open_evaluation(
    model_dir: str | Path, data_dir: str | Path, *, backend: str = "auto", device: str | None = None
) -> tuple[Any, Any, Any]:
    """(artifact, dataset, predictor), or EvaluationError with the sentence saying why not."""
    from core.data.dataset import DatasetError, load_chestxray14
    from core.inference.artifact import ArtifactError, read_artifact
    from core.inference.predictor import Predictor

    try:
        artifact = read_artifact(model_dir)
        unknown = [label for label in artifact.labels if label not in FINDINGS]
        if unknown:
            raise EvaluationError(
                f"The model predicts labels ChestX-ray14 does not have: {', '.join(unknown)}."
            )
        ds = load_chestxray14(data_dir)
        return artifact, ds, Predictor(artifact, backend=backend, device=device)
    except (ArtifactError, DatasetError) as exc:
        raise EvaluationError(str(exc)) from exc


def predict_split(
    artifact: Any,
    ds: Any,
    predictor: Any,
    split: str,
    *,
    exclude: frozenset[str] | set[str] = frozenset(),
    batch_size: int = 16,
    progress: Progress | None = None,
    cache: Any = None,
) -> SplitPass:
    """Predict every image of `split` (but `exclude`) once; `progress(done, total)` follows the images.
    `cache`: a core.data.cache.ImageCache of the files (by path) at the model's resize, read instead of the
    files for every image without a bounding box."""
    started = time.perf_counter()
    ids, split_info = split_images(ds, split, artifact.card)
    n_listed = len(ids)
    ids = [index for index in ids if index not in exclude]
    if not ids:
        raise EvaluationError(f"The {split} split of {ds.root} has no images to evaluate.")
    paths = ds.image_paths(ids)
    boxes = ds.boxes[ds.boxes["image_index"].isin(set(ids))]
    boxes_by_image = {index: group for index, group in boxes.groupby("image_index")}
    probabilities = np.zeros((len(ids), len(artifact.labels)), dtype=np.float64)
    box_items: list[tuple[str, str, Any, tuple[float, float, float, float]]] = []
    unreadable: dict[str, str] = {}
    keep = np.ones(len(ids), dtype=bool)
    originals = frozenset(str(paths[index]) for index in boxes_by_image)
    images = _read_images([str(paths[i]) for i in ids], cache=cache, originals=originals)
    try:
        _predict_all(ids, images, predictor, batch_size, artifact.labels, boxes_by_image, probabilities,
                     box_items, unreadable, keep, progress)  # fmt: skip
    finally:
        images.close()
    if not keep.any():
        raise EvaluationError(f"None of the {len(ids)} images of the {split} split could be read.")
    return SplitPass(
        split=split,
        split_info=split_info,
        labels=tuple(artifact.labels),
        ids=[index for index, ok in zip(ids, keep, strict=True) if ok],
        probabilities=probabilities[keep],
        box_items=box_items,
        unreadable=unreadable,
        n_excluded=n_listed - len(ids),
        model_name=artifact.name,
        model_dir=Path(artifact.path),
        card=artifact.card,
        data_dir=Path(ds.root),
        data_entry_name=ds.data_entry_name,
        backend=predictor.backend.name,
        seconds=time.perf_counter() - started,
    )


def split_report(
    split_pass: SplitPass,
    ds: Any,
    labels: LabelSource | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    thresholds: str | Mapping[str, float | None] = "validation",
    thresholds_source: str | None = None,
) -> dict[str, Any]:
    """The evaluation report of one pass against one label source (no inference).

    `thresholds`: "validation" (the model card's), "youden" (chosen on this split, optimistic) or a
    mapping chosen elsewhere (e.g. on the validation split), described by `thresholds_source`.
    """
    from core.data.dataset import DatasetError, labels_matrix
    from core.evaluation.localization import localization_report
    from core.evaluation.metrics import (
        evaluation_report,
        precision_recall_f1_at,
        to_jsonable,
        youden_thresholds,
    )

    if isinstance(thresholds, str) and thresholds not in THRESHOLD_MODES:
        raise EvaluationError(f"Unknown thresholds '{thresholds}': use {' or '.join(THRESHOLD_MODES)}.")
    started = time.perf_counter()
    labels = labels or LabelSource()
    mask = np.array([index not in labels.excluded for index in split_pass.ids], dtype=bool)
    ids = [index for index, ok in zip(split_pass.ids, mask, strict=True) if ok]
    if not ids:
        raise EvaluationError(f"The {split_pass.split} split of {ds.root} has no images to evaluate.")
    columns = [FINDINGS.index(label) for label in split_pass.labels]
    try:
        y_true = labels_matrix(ds, ids, labels.table)[:, columns]
    except DatasetError as exc:
        raise EvaluationError(str(exc)) from exc
    probabilities = split_pass.probabilities[mask]
    kept = set(ids)
    items = [(label, prediction, box) for index, label, prediction, box in split_pass.box_items
             if index in kept]  # fmt: skip
    localization = localization_report(_upsampled(items)) if items else None

    card_thresholds = {label: float((split_pass.card.get("thresholds") or {}).get(label, 0.5))
                       for label in split_pass.labels}  # fmt: skip
    youden = youden_thresholds(y_true, probabilities, split_pass.labels)
    if isinstance(thresholds, str):
        main = card_thresholds if thresholds == "validation" else None
        other, other_key = (youden, "youden_on_this_split") if thresholds == "validation" else (
            card_thresholds, "model_card_thresholds")  # fmt: skip
        source = (
            "model card (" + str(split_pass.card.get("thresholds_source") or "as stored") + ")"
            if thresholds == "validation"
            else "Youden's J on this split (optimistic)"
        )
        mode = thresholds
    else:
        main = {label: (card_thresholds[label] if thresholds.get(label) is None else float(thresholds[label]))
                for label in split_pass.labels}  # fmt: skip
        other, other_key = youden, "youden_on_this_split"
        source, mode = thresholds_source or "given", "given"
    report = evaluation_report(
        y_true, probabilities, split_pass.labels, model_name=split_pass.model_name, split=split_pass.split,
        image_ids=ids, n_boot=n_boot, seed=seed, thresholds=main, localization=localization,
    )  # fmt: skip
    at_other = precision_recall_f1_at(y_true, probabilities, other, split_pass.labels)
    report[other_key] = {
        key: at_other[key]
        for key in ("thresholds", "precision", "recall", "f1", "mean_precision", "mean_recall", "mean_f1")
    }
    report.update(
        thresholds_source=source,
        thresholds_mode=mode,
        model_dir=str(split_pass.model_dir),
        data_dir=str(split_pass.data_dir),
        split_info=split_pass.split_info,
        labels_source=labels.description or f"NLP labels of {split_pass.data_entry_name}",
        n_excluded=split_pass.n_excluded + int((~mask).sum()),
        n_unreadable=len(split_pass.unreadable),
        n_localization_boxes=len(items),
        backend=split_pass.backend,
        seconds=round(split_pass.seconds + time.perf_counter() - started, 2),
    )
    report.update(small_numbers(y_true, probabilities, split_pass.labels, report, n_boot=n_boot, seed=seed))
    return to_jsonable(report)


def small_numbers(
    y_true: np.ndarray, probabilities: np.ndarray, labels: Sequence[str], report: dict[str, Any], *,
    n_boot: int, seed: int,
) -> dict[str, Any]:  # fmt: skip
    """Positives per finding, the findings with too few (< MIN_POSITIVES: left out of the mean) and the
    mean AUROC over the rest with its bootstrap CI (`mean_auroc_enough`, `mean_auroc_enough_ci`)."""
    from core.evaluation.compare import auroc_summary
    from core.evaluation.metrics import bootstrap_auroc_ci

    labels = list(labels)
    summary = auroc_summary(y_true, probabilities, labels, min_positives=MIN_POSITIVES)
    used = summary["mean_over"]
    defined = [label for label, v in summary["classes"].items() if v["auroc"] is not None]
    if used == defined:
        enough_ci = report.get("mean_auroc_ci")
    elif used and n_boot > 0:
        columns = [labels.index(label) for label in used]
        ci = bootstrap_auroc_ci(y_true[:, columns], probabilities[:, columns], used, n_boot=n_boot, seed=seed)
        enough_ci = ci["mean"]
    else:
        enough_ci = None
    return {
        "n_pos": {label: v["n_pos"] for label, v in summary["classes"].items()},
        "too_few": summary["left_out_too_few"],
        "min_positives": MIN_POSITIVES,
        "mean_auroc_enough": summary["mean_auroc"],
        "mean_auroc_enough_ci": enough_ci,
        "mean_note": summary["note"],
    }


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
    """Predict every image of `split` and return `core.evaluation.metrics.evaluation_report` plus
    localization.

    `progress(done, total)` follows the images predicted. `labels_table`: a CSV of corrected labels
    (image_index + 14 findings, optional exclude column) overriding the NLP labels; excluded images (and
    those listed in `exclude`) are left out and counted. Several label sources or splits of one model:
    `core.evaluation.suite.evaluate_suite` (one inference pass per split for all of them).
    """
    from core.data.dataset import DatasetError, read_image_list

    if thresholds not in THRESHOLD_MODES:
        raise EvaluationError(f"Unknown thresholds '{thresholds}': use {' or '.join(THRESHOLD_MODES)}.")
    if split not in SPLITS:
        raise EvaluationError(f"Unknown split '{split}': use one of {', '.join(SPLITS)}.")
    artifact, ds, predictor = open_evaluation(model_dir, data_dir, backend=backend, device=device)
    labels = read_label_source(labels_table)
    if exclude is not None:
        try:
            listed = read_image_list(exclude)
        except DatasetError as exc:
            raise EvaluationError(str(exc)) from exc
        labels = LabelSource(labels.table, labels.excluded | frozenset(listed), labels.description)
    split_pass = predict_split(artifact, ds, predictor, split, exclude=labels.excluded, batch_size=batch_size,
                               progress=progress)  # fmt: skip
    return split_report(split_pass, ds, labels, n_boot=n_boot, seed=seed, thresholds=thresholds)


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
        # A known dataset: the out-of-distribution gate is not asked (core.evaluation.ood_fit fits it).
        predictions = predictor.predict(pixels, batch_size=batch_size, check_ood=False) if pixels else []
        for position, prediction in zip(positions, predictions, strict=True):
            probabilities[position] = [prediction.probabilities[label] for label in labels]
            index = ids[position]
            group = boxes_by_image.get(index)
            for row in group.itertuples() if group is not None else ():
                if row.label in labels:
                    box = (row.x_img, row.y_img, row.w_img, row.h_img)
                    box_items.append((index, row.label, prediction, box))
        done += len(chunk_ids)
        if progress is not None:
            progress(done, len(ids))


def _upsampled(box_items: list) -> Iterator[tuple[str, np.ndarray, tuple[float, float, float, float]]]:
    for label, prediction, box in box_items:
        yield label, prediction.cam(label), box


def card_metrics_entry(report: dict[str, Any]) -> dict[str, Any]:
    """The compact part of a report that belongs in a model card's `metrics` (no curves)."""
    from core.data.dataset import DATASET_NAME

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
        # Small numbers: positives per finding, those too few to count, and the mean over the rest.
        "n_pos",
        "too_few",
        "mean_auroc_enough",
        "mean_auroc_enough_ci",
        "mean_note",
    )
    entry = {key: report.get(key) for key in keys if key in report}
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
    entry["source"] = (
        "core.evaluation.evaluate (images read from files, predicted through core.inference.predictor)"
    )
    return entry
