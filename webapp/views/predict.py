"""Predict: upload a chest X-ray, see CheXNet's 14 probabilities and a class activation map."""

from __future__ import annotations

import streamlit as st

from core.cam import render_overlay
from core.imaging import ImageRejected, read_xray
from webapp import predict_data
from webapp.auth import current_user
from webapp.charts import probability_bars
from webapp.formatting import plain, pretty
from webapp.model_loader import active_artifact, is_validated, load_active_predictor

st.title("Predict")
st.caption("Upload a frontal chest X-ray (PNG, JPEG or DICOM). Research use only — not for diagnosis.")

predictor, problem = load_active_predictor()
artifact = active_artifact()


def model_card() -> None:
    if artifact is None:
        return
    with st.expander(f"Model card: {plain(artifact.card['name'])}", expanded=False):
        st.markdown(predict_data.card_description(artifact.card))
        st.table(predict_data.card_table(artifact.card))


def send_to_review(filename: str, data: bytes) -> None:
    """Logged-in readers may keep an upload for review; anonymous uploads are never stored."""
    user = current_user()
    if user is None or user.role not in ("clinician", "admin"):
        return
    st.divider()
    if st.button("Send this image to review", icon=":material/rate_review:", key="send_to_review"):
        image_id, problem = predict_data.store_for_review(user.id, filename, data)
        if image_id is None:
            st.error(problem)
        else:
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

prediction = predict_data.cached_prediction(predictor, image, data)

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
    if validated:
        st.markdown(f"**Above threshold:** {predict_data.positives_text(prediction.positive)}")
    with st.expander("Table"):
        table = predict_data.prediction_table(prediction, predictor.thresholds)
        st.dataframe(table, hide_index=True, width="stretch")

with right:
    st.subheader("Where the model looked (CAM)")
    labels = sorted(predictor.labels, key=lambda k: -prediction.probabilities[k])
    finding = st.selectbox(
        "Finding",
        labels,
        index=0,
        format_func=lambda k: f"{pretty(k)} ({prediction.probabilities[k]:.3f})",
        key="cam_finding",
    )
    opacity = st.slider("Overlay opacity", 0.0, 1.0, 0.45, 0.05, key="cam_opacity")
    overlay = render_overlay(image.pixels, prediction.cam(finding), opacity)
    original_col, overlay_col = st.columns(2)
    original_col.image(
        image.pixels, caption=f"Original ({image.format}, {image.width}×{image.height})", width="stretch"
    )
    overlay_col.image(overlay, caption=f"CAM: {pretty(finding)}", width="stretch")
    st.download_button(
        "Download overlay (PNG)",
        predict_data.png_bytes(overlay),
        file_name=f"cam-{finding}.png",
        mime="image/png",
    )
    st.caption("The overlay covers the centre square the model saw; the rest of the image was not analysed.")

send_to_review(upload.name, data)
