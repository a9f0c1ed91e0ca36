"""Weakly-supervised localization scoring, as in ChestX-ray8 (Wang et al. 2017).

A class activation map (CAM) is turned into one box: normalise the CAM to [0, 1], keep pixels with
value >= `threshold_fraction`, and box the largest 8-connected region. Wang et al. binarised the
heatmap (scaled to [0, 255]) at a fixed intensity and boxed the resulting regions; 0.5 is this
module's default, not a value from the paper, so sweep it on validation boxes before trusting it.
One box per CAM (the largest region) keeps IoBB honest: boxing every small region would let a
scattered heatmap claim any ground truth.

Boxes are `(x, y, w, h)` with the origin at the top-left corner, x to the right (columns), y down
(rows), in pixel units, as in NIH's BBox_List_2017.csv. Pixel (row r, column c) covers
[c, c+1) x [r, r+1), so a region spanning columns 3..5 has x = 3, w = 3.

Scale: by default a CAM is in the image's pixel space (the caller upsampled it). A smaller CAM that
covers the whole image can be given with `image_size=(width, height)` of the image the ground-truth
box refers to; predicted boxes and argmax points are then scaled by (width / cam_w, height / cam_h).

Scores: IoBB = area(pred ∩ gt) / area(pred) (Wang et al.'s measure, which favours small predicted
boxes), IoU for comparison, and the pointing game (is the CAM's maximum inside the gt box).
A box counts as localised at T when IoBB >= T. A CAM without a box (flat) counts as a miss.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence, Sized
from typing import Any

import numpy as np
from scipy import ndimage

from core.errors import UserError
from core.labels import FINDINGS

Box = tuple[float, float, float, float]
ProgressFn = Callable[[int, int], None]

DEFAULT_T_IOBB: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
# BBox_List_2017.csv spells one finding differently from Data_Entry and CheXNet's outputs.
NIH_BBOX_LABEL_ALIASES: dict[str, str] = {"Infiltrate": "Infiltration"}

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


class LocalizationInputError(UserError, ValueError):
    """Raised for a CAM or box that cannot be scored; str() is one sentence."""


def _as_cam(cam: Any) -> np.ndarray:
    arr = np.asarray(cam, dtype=np.float64)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2 or arr.size == 0:
        raise LocalizationInputError(f"A CAM must be a non-empty 2-D array, not one of shape {arr.shape}.")
    if not np.all(np.isfinite(arr)):
        raise LocalizationInputError("The CAM contains NaN or infinite values.")
    return arr


def _as_box(box: Any) -> Box:
    values = [float(v) for v in box]
    if len(values) != 4 or not all(np.isfinite(values)):
        raise LocalizationInputError(f"A box must be four finite numbers (x, y, w, h), not {box!r}.")
    if values[2] < 0 or values[3] < 0:
        raise LocalizationInputError(f"A box cannot have a negative width or height: {box!r}.")
    x, y, w, h = values
    return (x, y, w, h)


def _scale(cam_shape: tuple[int, int], image_size: tuple[int, int] | None) -> tuple[float, float]:
    if image_size is None:
        return 1.0, 1.0
    width, height = image_size
    return float(width) / cam_shape[1], float(height) / cam_shape[0]


def normalise_cam(cam: Any) -> np.ndarray | None:
    """Min-max scale to [0, 1]; None for a flat CAM (it points nowhere)."""
    arr = _as_cam(cam)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return None
    return (arr - lo) / (hi - lo)


def cam_to_box(
    cam: Any, threshold_fraction: float = 0.5, image_size: tuple[int, int] | None = None
) -> Box | None:
    """Box (x, y, w, h) of the largest connected region where the normalised CAM >= threshold_fraction.

    In the CAM's pixels, or in image pixels when `image_size=(width, height)` is given. Ties in region
    size go to the region holding the CAM's maximum. None for a flat CAM.
    """
    if not 0 < threshold_fraction <= 1:
        raise LocalizationInputError("threshold_fraction must be in (0, 1].")
    norm = normalise_cam(cam)
    if norm is None:
        return None
    regions, n_regions = ndimage.label(norm >= threshold_fraction, structure=_EIGHT_CONNECTED)
    sizes = np.bincount(regions.ravel(), minlength=n_regions + 1)[1:]
    peak_region = regions.flat[int(np.argmax(norm))]
    largest = np.flatnonzero(sizes == sizes.max()) + 1
    chosen = peak_region if peak_region in largest else int(largest[0])
    rows, cols = np.nonzero(regions == chosen)
    sx, sy = _scale(norm.shape, image_size)
    x0, y0 = int(cols.min()), int(rows.min())
    w, h = int(cols.max()) - x0 + 1, int(rows.max()) - y0 + 1
    return (x0 * sx, y0 * sy, w * sx, h * sy)


def _intersection(a: Box, b: Box) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = min(ax + aw, bx + bw) - max(ax, bx)
    ih = min(ay + ah, by + bh) - max(ay, by)
    return max(0.0, iw) * max(0.0, ih)


def iobb(pred_box: Any, gt_box: Any) -> float:
    """Intersection over the detected (predicted) box's area; 0 for an empty predicted box."""
    pred, gt = _as_box(pred_box), _as_box(gt_box)
    area = pred[2] * pred[3]
    return _intersection(pred, gt) / area if area > 0 else 0.0


def iou(a: Any, b: Any) -> float:
    """Intersection over union of two boxes; 0 when both are empty."""
    box_a, box_b = _as_box(a), _as_box(b)
    inter = _intersection(box_a, box_b)
    union = box_a[2] * box_a[3] + box_b[2] * box_b[3] - inter
    return inter / union if union > 0 else 0.0


def cam_peak(cam: Any, image_size: tuple[int, int] | None = None) -> tuple[float, float]:
    """(x, y) of the centre of the CAM's maximum pixel (the first one if tied), in image pixels."""
    arr = _as_cam(cam)
    row, col = np.unravel_index(int(np.argmax(arr)), arr.shape)
    sx, sy = _scale(arr.shape, image_size)
    return ((col + 0.5) * sx, (row + 0.5) * sy)


def pointing_hit(cam: Any, gt_box: Any, image_size: tuple[int, int] | None = None) -> bool:
    """Pointing game: is the centre of the CAM's maximum pixel inside the ground-truth box (edges in)?"""
    x, y = cam_peak(cam, image_size)
    bx, by, bw, bh = _as_box(gt_box)
    return bool(bx <= x <= bx + bw and by <= y <= by + bh)


def _t_key(t: float) -> str:
    return f"{t:g}"


class _Tally:
    def __init__(self, t_values: Sequence[float]) -> None:
        self.t_values = t_values
        self.iobbs: list[float] = []
        self.ious: list[float] = []
        self.hits = 0
        self.no_box = 0

    def add(self, box_iobb: float, box_iou: float, hit: bool, had_box: bool) -> None:
        self.iobbs.append(box_iobb)
        self.ious.append(box_iou)
        self.hits += int(hit)
        self.no_box += int(not had_box)

    def summary(self) -> dict[str, Any]:
        n = len(self.iobbs)
        iobbs, ious = np.asarray(self.iobbs), np.asarray(self.ious)
        return {
            "n_boxes": n,
            "n_no_box": self.no_box,
            "iobb_accuracy": {_t_key(t): float(np.mean(iobbs >= t)) for t in self.t_values},
            "iou_accuracy": {_t_key(t): float(np.mean(ious >= t)) for t in self.t_values},
            "mean_iobb": float(iobbs.mean()),
            "mean_iou": float(ious.mean()),
            "pointing_accuracy": self.hits / n,
        }


def localization_report(
    items: Iterable[tuple[str, Any, Any]],
    *,
    t_values: Sequence[float] = DEFAULT_T_IOBB,
    threshold_fraction: float = 0.5,
    image_size: tuple[int, int] | None = None,
    label_aliases: Mapping[str, str] = NIH_BBOX_LABEL_ALIASES,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Score (label, cam, gt_box) items: accuracy at T(IoBB) and T(IoU), mean IoBB/IoU, pointing game.

    `items` is consumed once (a generator is fine, so CAMs need not all be in memory). Each CAM is the
    model's map for the item's label; `image_size` applies to every item (see the module docstring).
    Labels are mapped through `label_aliases` (NIH's "Infiltrate" -> "Infiltration").
    Returns `{"per_label": {label: summary}, "overall": summary | None, "t_values", "threshold_fraction",
    "criterion"}`, labels in CheXNet order then any others; `overall` pools all boxes.
    `progress(done, total)` gets total = len(items) when items has a length, else 0.
    """
    t_values = [float(t) for t in t_values]
    total = len(items) if isinstance(items, Sized) else 0
    overall = _Tally(t_values)
    per_label: dict[str, _Tally] = {}
    done = 0
    for label, cam, gt_box in items:
        label = label_aliases.get(label, label)
        gt = _as_box(gt_box)
        pred = cam_to_box(cam, threshold_fraction, image_size)
        box_iobb = iobb(pred, gt) if pred is not None else 0.0
        box_iou = iou(pred, gt) if pred is not None else 0.0
        hit = pointing_hit(cam, gt, image_size)
        for tally in (overall, per_label.setdefault(label, _Tally(t_values))):
            tally.add(box_iobb, box_iou, hit, pred is not None)
        done += 1
        if progress is not None:
            progress(done, total)
    order = [label for label in FINDINGS if label in per_label] + sorted(set(per_label) - set(FINDINGS))
    return {
        "per_label": {label: per_label[label].summary() for label in order},
        "overall": overall.summary() if overall.iobbs else None,
        "t_values": t_values,
        "threshold_fraction": float(threshold_fraction),
        "criterion": "IoBB >= T (IoU >= T for iou_accuracy); one box per CAM, largest region",
    }
