"""What the Predict page computes and keeps: the prediction of an upload (once per file and model), the
active model's card as rows, the tables and files it offers, and storing an upload for review."""

from __future__ import annotations

import hashlib
import io
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image
from sqlalchemy.exc import SQLAlchemyError

from core.errors import UserError
from core.imaging import XrayImage
from core.predictor import Prediction, Predictor
from db.importer import store_upload
from db.reviews import account_by_id
from webapp.database import session
from webapp.formatting import plain, pretty

INTENDED_USE = "Research use only — not for diagnosis."


def cached_prediction(predictor: Predictor, image: XrayImage, data: bytes) -> Prediction:
    """The prediction of this file by this model; moving a slider does not run the network again."""
    state = st.session_state
    key = (hashlib.sha256(data).hexdigest(), predictor.name, id(predictor))
    if state.get("prediction_key") != key:
        with st.spinner("Running CheXNet…"):
            state["prediction"] = predictor.predict_one(image.pixels)
        state["prediction_key"] = key
    return state["prediction"]


def card_description(card: dict[str, Any]) -> str:
    """The card's description, markdown-escaped (it is written by whoever trained the model)."""
    description = card.get("description")
    return plain(description) if description else "_No description._"


def card_rows(card: dict[str, Any]) -> dict[str, str]:
    provenance = card.get("provenance") or {}
    data = provenance.get("data") or {}
    return {
        "Model": card["name"],
        "Architecture": card.get("arch", "densenet121"),
        "Training data": data.get("description") or data.get("folder") or "not recorded",
        "Measured mean AUROC": mean_auroc_text(card.get("metrics") or {}),
        "Created": card.get("created_at", "unknown"),
        "Intended use": card.get("intended_use", INTENDED_USE),
    }


def card_table(card: dict[str, Any]) -> pd.DataFrame:
    rows = card_rows(card)
    return pd.DataFrame({"": list(rows.values())}, index=list(rows.keys()))


def mean_auroc_text(metrics: dict[str, Any]) -> str:
    found = []
    for name, section in [("", metrics), *metrics.items()]:
        if isinstance(section, dict) and section.get("mean_auroc") is not None:
            where = section.get("split") or name or "evaluation"
            found.append(f"{section['mean_auroc']:.3f} ({where}, {section.get('n_images', '?')} images)")
    return "; ".join(found) or "not measured"


def positives_text(positives: list[str]) -> str:
    return ", ".join(pretty(p) for p in positives) if positives else "none"


def prediction_table(prediction: Prediction, thresholds: dict[str, float]) -> pd.DataFrame:
    """Per finding, most probable first: probability, threshold, whether it is above."""
    probabilities = prediction.probabilities
    table = pd.DataFrame(
        {
            "finding": list(probabilities),
            "probability": list(probabilities.values()),
            "threshold": [thresholds[k] for k in probabilities],
            "above threshold": [k in prediction.positive for k in probabilities],
        }
    )
    return table.sort_values("probability", ascending=False)


def png_bytes(picture: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
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
