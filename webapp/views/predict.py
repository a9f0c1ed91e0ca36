"""Predict: upload a chest X-ray, see CheXNet's 14 probabilities and a class activation map."""

from __future__ import annotations

import hashlib
import io

import pandas as pd
import streamlit as st
from PIL import Image
from sqlalchemy.exc import SQLAlchemyError

from core.cam import render_overlay
from core.imaging import ImageRejected, read_xray
from db.importer import store_upload
from db.models import User
from webapp import database
from webapp.auth import current_user
from webapp.charts import probability_bars
from webapp.model_loader import active_artifact, is_validated, load_active_predictor

st.title("Predict")
st.caption("Upload a frontal chest X-ray (PNG, JPEG or DICOM). Research use only — not for diagnosis.")

predictor, problem = load_active_predictor()
artifact = active_artifact()


def model_card() -> None:
    if artifact is None:
        return
    card = artifact.card
    with st.expander(f"Model card: {card['name']}", expanded=False):
        st.markdown(card.get("description") or "_No description._")
        provenance = card.get("provenance") or {}
        data = provenance.get("data") or {}
        metrics = card.get("metrics") or {}
        rows = {
            "Model": card["name"],
            "Architecture": card.get("arch", "densenet121"),
            "Training data": data.get("description") or data.get("folder") or "not recorded",
            "Measured mean AUROC": _mean_auroc_text(metrics),
            "Created": card.get("created_at", "unknown"),
            "Intended use": card.get("intended_use", "Research use only — not for diagnosis."),
        }
        st.table(pd.DataFrame({"": list(rows.values())}, index=list(rows.keys())))


def _mean_auroc_text(metrics: dict) -> str:
    found = []
    for name, section in [("", metrics), *metrics.items()]:
        if isinstance(section, dict) and section.get("mean_auroc") is not None:
            where = section.get("split") or name or "evaluation"
            found.append(f"{section['mean_auroc']:.3f} ({where}, {section.get('n_images', '?')} images)")
    return "; ".join(found) or "not measured"


def send_to_review(filename: str, data: bytes) -> None:
    """Logged-in readers may keep an upload for review; anonymous uploads are never stored."""
    user = current_user()
    if user is None or user.role not in ("clinician", "admin"):
        return
    st.divider()
    if st.button("Send this image to review", icon=":material/rate_review:", key="send_to_review"):
        try:
            with database.session() as db_session:
                stored = store_upload(db_session, data, filename, db_session.get(User, user.id))
                image_id = stored.id
        except SQLAlchemyError:
            st.error("The image could not be stored because the database is unavailable; nothing was saved.")
            return
        st.success(f"Stored for review as image #{image_id} (each file is stored once, by its content).")


model_card()
if predictor is None:
    st.info(problem)
    st.stop()

upload = st.file_uploader(
    "Chest X-ray",
    type=None,
    accept_multiple_files=False,
    key="upload",
    help="PNG (8/16-bit), JPEG or DICOM. The file type is read from its contents.",
)
if upload is None:
    st.stop()

data = upload.getvalue()
try:
    image = read_xray(data)
except ImageRejected as exc:
    st.error(str(exc))
    st.stop()

# Predictions are kept per file and model so moving a slider does not run the network again.
cache_key = (hashlib.sha256(data).hexdigest(), predictor.name, id(predictor))
if st.session_state.get("prediction_key") != cache_key:
    with st.spinner("Running CheXNet…"):
        st.session_state["prediction"] = predictor.predict_one(image.pixels)
    st.session_state["prediction_key"] = cache_key
prediction = st.session_state["prediction"]

validated = artifact is not None and is_validated(artifact)
if not validated:
    st.warning(
        "This model has no measured performance (its card records no AUROC). Its scores are shown for "
        "testing the software only and are not findings."
    )

left, right = st.columns([5, 6])
with left:
    st.subheader("Findings" if validated else "Scores (unvalidated model)")
    st.plotly_chart(probability_bars(prediction.probabilities, predictor.thresholds), width="stretch")
    positives = prediction.positive
    if validated:
        st.markdown(
            "**Above threshold:** "
            + (", ".join(p.replace("_", " ") for p in positives) if positives else "none")
        )
    table = pd.DataFrame(
        {
            "finding": list(prediction.probabilities),
            "probability": list(prediction.probabilities.values()),
            "threshold": [predictor.thresholds[k] for k in prediction.probabilities],
            "above threshold": [k in positives for k in prediction.probabilities],
        }
    ).sort_values("probability", ascending=False)
    with st.expander("Table"):
        st.dataframe(table, hide_index=True, width="stretch")

with right:
    st.subheader("Where the model looked (CAM)")
    labels = sorted(predictor.labels, key=lambda k: -prediction.probabilities[k])
    finding = st.selectbox(
        "Finding",
        labels,
        index=0,
        format_func=lambda k: f"{k.replace('_', ' ')} ({prediction.probabilities[k]:.3f})",
        key="cam_finding",
    )
    opacity = st.slider("Overlay opacity", 0.0, 1.0, 0.45, 0.05, key="cam_opacity")
    overlay = render_overlay(image.pixels, prediction.cam(finding), opacity)
    original_col, overlay_col = st.columns(2)
    original_col.image(
        image.pixels, caption=f"Original ({image.format}, {image.width}×{image.height})", width="stretch"
    )
    overlay_col.image(overlay, caption=f"CAM: {finding.replace('_', ' ')}", width="stretch")
    buffer = io.BytesIO()
    Image.fromarray(overlay).save(buffer, format="PNG")
    st.download_button(
        "Download overlay (PNG)", buffer.getvalue(), file_name=f"cam-{finding}.png", mime="image/png"
    )
    st.caption("The overlay covers the centre square the model saw; the rest of the image was not analysed.")

send_to_review(upload.name, data)
