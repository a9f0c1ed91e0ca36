"""What the Review page shows of the open image: its pixels, the active model's output on it, the
viewer's picture and notes, and the label table beside the form.

Sentences returned here are markdown-safe: the image's name (an upload's file name) is escaped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from core.imaging.reader import ImageRejected, read_xray, read_xray_file
from core.inference.cam import render_overlay
from core.inference.predictor import Prediction, Predictor
from core.labels import FINDINGS
from webapp.formatting import plain, pretty
from webapp.model_loader import is_validated, load_active_predictor
from webapp.review_data import ReviewTarget
from webapp.viewer import EncodedPicture, apply_window, encode_picture

MOST_PROBABLE = "__most_probable__"  # the CAM finding choice "whichever is most probable"
CACHED_PREDICTIONS = 8
TABLE_HEIGHT = (len(FINDINGS) + 1) * 35 + 3  # every finding without scrolling


CACHED_PIXELS = 3  # the image on screen, the next one (read ahead) and the previous one


def _pixel_cache() -> dict:
    return st.session_state.setdefault("review_pixel_cache", {})


def xray_pixels(target: ReviewTarget) -> tuple[np.ndarray | None, str | None]:
    """(uint8 grey pixels, None) or (None, a sentence why the image cannot be shown)."""
    cache = _pixel_cache()
    if (target.image_id, target.path) in cache:
        return cache[(target.image_id, target.path)], None
    name = plain(target.name)
    if not target.path:
        return None, f"The file of {name} was not imported (the dataset was imported without images)."
    try:
        image = read_xray_file(target.path)
    except FileNotFoundError:
        return None, f"The file of {name} is missing at {plain(target.path)}."
    except (OSError, ImageRejected) as exc:
        return None, f"The file of {name} cannot be read: {plain(exc)}"
    _remember(cache, (target.image_id, target.path), image.pixels, CACHED_PIXELS)
    return image.pixels, None


def _remember(cache: dict, key: object, value: object, size: int) -> None:
    cache.pop(key, None)
    cache[key] = value
    while len(cache) > size:
        cache.pop(next(iter(cache)))


def read_ahead(image_id: int, path: str | None, predictor: Predictor | None) -> None:
    """Read the next image's file and run `predictor` (this run's model; None: AI hidden or no model) on
    it now, while the reader looks at this one, so that Save & next only has to draw it. Errors are left
    for when the image is opened."""
    if not path or (image_id, path) in _pixel_cache():
        return
    try:
        data = Path(path).read_bytes()
        pixels = read_xray(data).pixels
    except (OSError, ImageRejected):
        return
    _remember(_pixel_cache(), (image_id, path), pixels, CACHED_PIXELS)
    if predictor is not None:
        cache: dict = st.session_state.setdefault("review_predictions", {})
        key = (image_id, predictor.name, id(predictor))
        if key not in cache:  # the file's bytes too: the OOD gate's colour check reads them
            _remember(cache, key, predictor.predict_one(pixels, file_bytes=data), CACHED_PREDICTIONS)


def model_prediction(
    target: ReviewTarget, pixels: np.ndarray
) -> tuple[Prediction | None, Predictor | None, str | None]:
    """(prediction, predictor, None) or (None, None, why there is no model), computed once per image
    and model."""
    predictor, problem = load_active_predictor()
    if predictor is None:
        return None, None, problem
    cache: dict = st.session_state.setdefault("review_predictions", {})
    key = (target.image_id, predictor.name, id(predictor))
    if key not in cache:
        prediction = predictor.predict_one(pixels, file_bytes=_file_bytes(target.path))
        _remember(cache, key, prediction, CACHED_PREDICTIONS)
    return cache[key], predictor, None


def _file_bytes(path: str | None) -> bytes | None:
    """The image file's bytes for the OOD gate's colour check (read again: the pixel cache keeps pixels
    only); None when it cannot be read, and the gate then judges the pixels alone."""
    try:
        return Path(path).read_bytes() if path else None
    except OSError:
        return None


def cam_choice_text(prediction: Prediction, choice: str) -> str:
    probabilities = prediction.probabilities
    if choice == MOST_PROBABLE:
        top = prediction.most_probable()
        return f"Top: {pretty(top)} {probabilities[top]:.2f}"
    return f"{pretty(choice)} {probabilities[choice]:.2f}"


def windowed_picture(
    image_id: int, pixels: np.ndarray, window: tuple[int, int], invert: bool
) -> EncodedPicture:
    """The windowed image encoded for the figure, kept for the image on screen and the next one (read
    ahead with the window it will open with), so Save & next does not wait for the PNG."""
    cache: dict = st.session_state.setdefault("review_picture_cache", {})
    key = (image_id, window, invert)
    if key not in cache:
        picture = encode_picture(apply_window(pixels, window[0], window[1], invert))
        _remember(cache, key, picture, CACHED_PIXELS)
    return cache[key]


def viewer_picture(
    image_id: int,
    pixels: np.ndarray,
    window: tuple[int, int],  # (low, high) grey levels
    invert: bool,
    prediction: Prediction | None,
    cam_choice: str | None,
    opacity: float,
) -> tuple[np.ndarray | EncodedPicture, str | None]:
    """(the windowed image, with the CAM of the chosen finding laid over it when asked; that finding)."""
    if prediction is None or cam_choice is None:
        return windowed_picture(image_id, pixels, window, invert), None
    shown = apply_window(pixels, window[0], window[1], invert)
    finding = prediction.most_probable() if cam_choice == MOST_PROBABLE else cam_choice
    return render_overlay(shown, prediction.cam(finding), opacity), finding


def cached_pixels(image_id: int, path: str | None) -> np.ndarray | None:
    """The pixels read (ahead) of an image, if they are in the cache."""
    return _pixel_cache().get((image_id, path))


def viewer_notes(boxes: list[tuple[str, float, float, float, float]], cam_finding: str | None) -> str:
    notes = [
        "Scroll to zoom, drag to pan, double-click to reset; the zoom stays while you change the picture."
    ]
    if boxes:
        notes.append("Boxes: " + ", ".join(sorted({pretty(box[0]) for box in boxes})) + " (NIH).")
    if cam_finding:
        notes.append(f"CAM of {pretty(cam_finding)}, over the centre square the model saw.")
    return " ".join(notes)


def image_details(target: ReviewTarget) -> str:
    patient = f"patient {target.patient_id}" if target.patient_id else ""
    return " · ".join(part for part in (target.split or "no split", target.view or "", patient) if part)


def label_table(target: ReviewTarget, prediction: Prediction | None) -> pd.DataFrame | None:
    """What the reader may see beside their answer: the model and NLP label (AI-first), the image's
    current label (blinding off). None when there is nothing (blinded and AI-hidden)."""
    columns: dict[str, list] = {"Finding": [pretty(f) for f in FINDINGS]}
    if target.ai_shown:
        columns["Model"] = [prediction.probabilities.get(f) if prediction else None for f in FINDINGS]
        columns["NLP"] = [bool(target.nlp[f]) if target.nlp else None for f in FINDINGS]
    if not target.blinded:
        columns["Current"] = [bool(target.effective.findings[f]) for f in FINDINGS]
    return pd.DataFrame(columns) if len(columns) > 1 else None


def label_table_columns(predictor: Predictor | None) -> dict:
    """The label table's column settings; the Model column's help says whether this run's model is
    validated."""
    model_note = "Model: probability of the active model"
    if predictor is not None and not is_validated(predictor.artifact):
        model_note += " (unvalidated: scores for testing the software only)"
    column = st.column_config
    return {
        "Finding": column.TextColumn("Finding", width=150),
        "Model": column.ProgressColumn(
            "Model", min_value=0.0, max_value=1.0, format="%.2f", help=model_note, width=90
        ),
        "Current": column.CheckboxColumn("Label", help="The image's effective label now.", width=50),
        "NLP": column.CheckboxColumn("NLP", help="The dataset's NLP-mined label.", width=45),
    }


def google_text(target: ReviewTarget) -> str | None:
    if not target.google:
        return None
    google = ", ".join(
        f"{plain(name)}: {'yes' if value else 'no'}"
        for name, value in target.google.items()
        if name != "set_id" and value is not None
    )
    return f"Google 2019 radiologist-adjudicated labels — {google}."
