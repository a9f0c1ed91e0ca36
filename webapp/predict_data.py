"""What the Predict page computes and keeps: the prediction of an upload (once per file and model), the
active model's card as rows, the tables and files it offers, the out-of-distribution hook, and storing
an upload for review."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image
from sqlalchemy.exc import SQLAlchemyError

from core.errors import UserError
from core.evaluation.card_verdict import bar_text, judge_card
from core.imaging.display import display_copy
from core.imaging.reader import read_xray
from core.inference.cam import render_overlay
from core.inference.predictor import Prediction, Predictor
from db.importer import store_upload
from db.operating_points import OperatingPoint
from db.reviews import account_by_id
from webapp.database import session
from webapp.formatting import plain, pretty, when_text
from webapp.predict_charts import fixed_scale_cam
from webapp.upload_slots import upload_slot, upload_slots_for_later

INTENDED_USE = "Research use only — not for diagnosis."
AdminPoints = dict[str, OperatingPoint]  # the thresholds an admin set for the served version, by finding


@dataclass(frozen=True)
class UploadView:
    """What the page keeps of an upload between reruns: a screen-size copy, never the full pixels."""

    format: str
    width: int  # of the original
    height: int
    display: np.ndarray  # grey uint8, at most core.imaging.display.DISPLAY_MAX_SIDE a side

    @property
    def display_size(self) -> tuple[int, int]:
        return self.display.shape[1], self.display.shape[0]


def analysed_upload(predictor: Predictor, data: bytes) -> tuple[UploadView, Prediction]:
    """The upload's screen copy and its prediction by this model, computed once per file and model (moving
    a slider does not decode or run the network again). Decoding and the network hold an upload slot,
    and the full-resolution pixels are dropped before the page draws. Raises ImageRejected."""
    state = st.session_state
    key = (hashlib.sha256(data).hexdigest(), predictor.name, id(predictor))
    if state.get("prediction_key") != key:
        for stale in ("prediction_key", "prediction", "upload_view"):
            state.pop(stale, None)  # the previous upload's arrays go before the next is decoded
        with upload_slot(), st.spinner("Running CheXNet…"):
            image = read_xray(data)
            # The file's bytes too: the out-of-distribution gate's colour check reads them.
            prediction = predictor.predict_one(image.pixels, file_bytes=data)
            view = UploadView(image.format, image.width, image.height, display_copy(image.pixels))
            del image
        state["prediction"], state["upload_view"], state["prediction_key"] = prediction, view, key
    return state["upload_view"], state["prediction"]


def full_resolution_overlay(data: bytes, prediction: Prediction, finding: str, opacity: float,
                            fixed_scale: bool) -> Callable[[], bytes]:  # fmt: skip
    """A download's data: the overlay at the upload's own resolution as PNG, rendered only when asked
    for (on its own thread, holding an upload slot)."""
    slots = upload_slots_for_later()

    def render() -> bytes:
        with slots:
            pixels = read_xray(data).pixels
            cam = fixed_scale_cam(prediction, finding) if fixed_scale else prediction.cam(finding)
            return png_bytes(render_overlay(pixels, cam, opacity))

    return render


def card_description(card: dict[str, Any]) -> str:
    """The card's description, markdown-escaped (it is written by whoever trained the model)."""
    description = card.get("description")
    return plain(description) if description else "_No description._"


def card_rows(card: dict[str, Any], operating_points: AdminPoints | None = None) -> dict[str, str]:
    provenance = card.get("provenance") or {}
    data = provenance.get("data") or {}
    verdict = judge_card(card)
    return {
        "Model": card["name"],
        "Architecture": card.get("arch", "densenet121"),
        "Training data": data.get("description") or data.get("folder") or "not recorded",
        "Measured mean AUROC": mean_auroc_text(card.get("metrics") or {}),
        "Validated": ("yes: " if verdict.validated else "no: ") + verdict.reason,
        "Bar for findings": bar_text(),
        "Thresholds": threshold_origin_text(card, operating_points),
        "Created": card.get("created_at", "unknown"),
        "Intended use": card.get("intended_use", INTENDED_USE),
    }


def card_table(card: dict[str, Any], operating_points: AdminPoints | None = None) -> pd.DataFrame:
    rows = card_rows(card, operating_points)
    return pd.DataFrame({"": list(rows.values())}, index=list(rows.keys()))


def mean_auroc_text(metrics: dict[str, Any]) -> str:
    found = []
    for name, section in [("", metrics), *metrics.items()]:
        if isinstance(section, dict) and section.get("mean_auroc") is not None:
            where = section.get("split") or name or "evaluation"
            text = f"{section['mean_auroc']:.3f} ({where}, {section.get('n_images', '?')} images"
            ci = section.get("mean_auroc_ci")
            if ci and None not in ci:
                text += f", 95% CI {ci[0]:.3f}–{ci[1]:.3f}"
            n_pos = section.get("n_pos")
            if isinstance(n_pos, dict):
                enough = sum(1 for v in n_pos.values() if v >= 10)
                text += f", {enough} of {len(n_pos)} findings with at least 10 positives"
            else:
                text += ", positives per finding not recorded"
            found.append(text + ")")
    return "; ".join(found) or "not measured"


def threshold_origin_text(card: dict[str, Any], operating_points: AdminPoints | None = None) -> str:
    """Where the operating thresholds came from and where their precision/recall were measured; first
    the ones an admin set for the served version (`operating_points`, webapp.active_model), if any.
    Plain text (the admin's reason as typed): escape it for markdown."""
    card_text = _card_threshold_origin(card)
    if not operating_points:
        return card_text
    set_text = "; ".join(
        f"{pretty(finding)} {point.threshold:.3f}, set {_by(point)} on {when_text(point.created_at)}: "
        f"{' '.join(point.reason.split())}"
        for finding, point in operating_points.items()
    )
    return (
        f"Set by an admin on Models & ROC for {len(operating_points)} finding(s) ({set_text}); their "
        f"precision and recall at these thresholds have not been measured. The other thresholds: {card_text}"
    )


def _by(point: OperatingPoint) -> str:
    return f"by {point.set_by}" if point.set_by else "from the command line"


def _card_threshold_origin(card: dict[str, Any]) -> str:
    points = card.get("operating_points")
    if points:
        reported = points.get("reported_on") or {}
        return (
            f"{points.get('description', '')} Precision and recall below are on the {reported.get('split')} "
            f"split ({reported.get('n_images', '?')} images), not on the images they were chosen on."
        )
    chosen = card.get("thresholds_chosen_on")
    if chosen:
        return (
            f"Chosen by {chosen.get('method', 'Youden')} on the {chosen.get('split')} split "
            f"({chosen.get('n_images', '?')} images) when the model was trained; their precision and recall "
            "on another split have not been measured (evaluate the model on Models & ROC)."
        )
    return str(card.get("thresholds_source") or "The model card does not say how the thresholds were chosen.")


def positives_text(positives: list[str]) -> str:
    return ", ".join(pretty(p) for p in positives) if positives else "none"


def prediction_table(
    prediction: Prediction, thresholds: dict[str, float], card: dict[str, Any] | None = None, *,
    findings: bool = True, operating_points: AdminPoints | None = None,
) -> pd.DataFrame:  # fmt: skip
    """Per finding, most probable first: probability, threshold, the precision and recall measured at it
    (from the card, on a split other than the one it was chosen on), and whether it is above (findings
    only: a weak model's scores are never called above threshold). A threshold an admin set
    (`operating_points`) has no measured figures, and a "threshold from" column says who set it."""
    probabilities = prediction.probabilities
    admin_set = operating_points or {}
    measured = ((card or {}).get("operating_points") or {}).get("classes") or {}
    measured = {k: v for k, v in measured.items() if k not in admin_set}
    table = pd.DataFrame(
        {
            "finding": [pretty(k) for k in probabilities],
            "probability": list(probabilities.values()),
            "threshold": [thresholds[k] for k in probabilities],
            "precision at threshold": [(measured.get(k) or {}).get("precision") for k in probabilities],
            "recall at threshold": [(measured.get(k) or {}).get("recall") for k in probabilities],
            "positives measured on": [(measured.get(k) or {}).get("n_pos") for k in probabilities],
        }
    )
    if admin_set:
        table["threshold from"] = [
            f"admin, {_by(admin_set[k])}" if k in admin_set else "model card" for k in probabilities
        ]
    if findings:
        table["above threshold"] = [k in prediction.positive for k in probabilities]
    return table.sort_values("probability", ascending=False)


@dataclass(frozen=True)
class OodView:
    flagged: bool
    score: float | None
    reason: str


def ood_verdict(prediction: Any) -> OodView | None:
    """The out-of-distribution gate's verdict on this image, when the predictor gives one.

    The hook for the gate: a Prediction with an `ood` field (a dict or an object with flagged, score
    and reason). None when the predictor has no gate; then the page shows the model's output as usual.
    """
    ood = getattr(prediction, "ood", None)
    if ood is None:
        return None
    values = ood if isinstance(ood, dict) else ood.to_dict() if hasattr(ood, "to_dict") else vars(ood)
    score = values.get("score")
    reason = str(values.get("reason") or "")
    flagged = bool(values.get("flagged", False))
    if flagged and not reason:
        reason = "The image does not look like an adult frontal chest X-ray from the model's training data."
    return OodView(flagged, None if score is None else float(score), reason)


def png_bytes(picture: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    # Fast compression: a 50-megapixel overlay is written in seconds, not a minute.
    Image.fromarray(picture).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def store_for_review(user_id: int, filename: str, data: bytes) -> tuple[int | None, str | None]:
    """(the stored image's id, None) or (None, a sentence why nothing was stored). Stored once by content."""
    try:
        with session() as db_session:
            image = store_upload(db_session, data, filename, account_by_id(db_session, user_id))
            return image.id, None
    except UserError as exc:
        return None, plain(exc)
    except SQLAlchemyError:
        return None, "The image could not be stored because the database is unavailable; nothing was saved."
