"""Predict: upload a chest X-ray, see CheXNet's 14 probabilities and a class activation map.

Outputs are called "findings" (with some above threshold) only for a validated model
(core.evaluation.card_verdict)
on an image the out-of-distribution gate passed; otherwise they are scores, marked as such.
"""

from __future__ import annotations

import streamlit as st

from core.evaluation.card_verdict import bar_text, judge_card
from core.imaging.reader import ImageRejected
from core.inference.cam import render_overlay
from webapp import pacs_predict, predict_charts, predict_data
from webapp.active_model import served_model
from webapp.auth import current_user
from webapp.formatting import plain, pretty

st.title("Predict")
st.caption("Upload a frontal chest X-ray (PNG, JPEG or DICOM). Research use only — not for diagnosis.")

user = current_user()
is_admin = user is not None and user.role == "admin"
served = served_model()
predictor, artifact = served.predictor, served.artifact
admin_points = served.operating_points  # thresholds an admin set: already in predictor.thresholds
verdict = judge_card(artifact.card) if artifact is not None else None


def model_availability() -> None:
    """A registry's active version that cannot be served is said first, loudly (paths for admins only)."""
    if served.unavailable:
        st.error(served.unavailable, icon=":material/error:")
    if served.detail and is_admin:
        st.caption(f"For admins: {plain(served.detail)}")


def model_card() -> None:
    if artifact is None:
        return
    # A weak or unvalidated model's card is open: its reason is part of reading the scores.
    with st.expander(f"Model card: {plain(artifact.card['name'])}", expanded=not verdict.validated):
        st.markdown(predict_data.card_description(artifact.card))
        st.table(predict_data.card_table(artifact.card, admin_points))


def send_to_review(filename: str, data: bytes) -> None:
    """Logged-in readers may keep an upload for review; anonymous uploads are never stored."""
    if user is None or user.role not in ("clinician", "admin"):
        return
    st.divider()
    if st.button("Send this image to review", icon=":material/rate_review:", key="send_to_review"):
        image_id, problem = predict_data.store_for_review(user.id, filename, data)
        if image_id is None:
            st.error(problem)
        else:
            st.success(f"Stored for review as image #{image_id} (each file is stored once, by its content).")


def scores_section(prediction, presented: bool) -> None:
    """The bars and table: findings (above-threshold colour) for a validated model, scores otherwise."""
    if presented:
        st.subheader("Findings")
    elif ood is not None and ood.flagged:
        st.subheader("Scores shown on request (image flagged as unlike the training data)")
    else:
        st.subheader("Scores from a weak/unvalidated model")
    figure = predict_charts.probability_bars(
        prediction.probabilities, predictor.thresholds, findings=presented
    )
    st.plotly_chart(figure, width="stretch", key="probability_bars")
    if presented:
        st.markdown(f"**Above threshold:** {predict_data.positives_text(prediction.positive)}")
    else:
        st.caption("Nothing is listed as above threshold: these scores are not findings.")
    origin = predict_data.threshold_origin_text(artifact.card, admin_points)
    st.caption(f"Where the thresholds come from: {plain(origin)}")
    with st.expander("Table: probability, threshold, precision and recall at it"):
        table = predict_data.prediction_table(
            prediction, predictor.thresholds, artifact.card, findings=presented, operating_points=admin_points
        )
        st.dataframe(table, hide_index=True, width="stretch")


def cam_section(prediction, view: predict_data.UploadView, data: bytes) -> None:
    st.subheader("Where the model looked (CAM)")
    labels = sorted(predictor.labels, key=lambda k: -prediction.probabilities[k])
    finding = st.selectbox(
        "Finding",
        labels,
        index=0,
        format_func=lambda k: f"{pretty(k)} ({prediction.probabilities[k]:.3f})",
        key="cam_finding",
    )
    controls = st.columns(2)
    opacity = controls[0].slider("Overlay opacity", 0.0, 1.0, 0.45, 0.05, key="cam_opacity")
    fixed = controls[1].toggle(
        "Same scale for every finding",
        key="cam_fixed_scale",
        help="Off: each finding's map is stretched to the full colour range. On: one scale for all 14 "
        "findings of this image, so a weak map looks weak.",
    )
    # Drawn at screen size (core.imaging.display): the full-resolution overlay is rendered only for the
    # download.
    size = view.display_size
    if fixed:
        cam = predict_charts.fixed_scale_cam(prediction, finding, size)
    else:
        cam = prediction.cam(finding, size)
    overlay = render_overlay(view.display, cam, opacity)
    original_col, overlay_col = st.columns(2)
    original_col.image(
        view.display, caption=f"Original ({view.format}, {view.width}×{view.height})", width="stretch"
    )
    overlay_col.image(overlay, caption=f"CAM: {pretty(finding)}", width="stretch")
    st.image(predict_charts.colour_scale(), width="stretch")
    scale = (
        "lowest to highest activation of any finding" if fixed else f"lowest to highest of {pretty(finding)}"
    )
    st.caption(f"Colour scale, left to right: {scale} in this image (not a probability).")
    st.download_button(
        f"Download overlay (PNG, {view.width}×{view.height})",
        predict_data.full_resolution_overlay(data, prediction, finding, opacity, fixed),
        file_name=f"cam-{finding}.png",
        mime="image/png",
    )
    st.caption("The overlay covers the centre square the model saw; the rest of the image was not analysed.")


model_availability()
model_card()
if predictor is None:
    st.info(served.problem)
    st.stop()

from_pacs = pacs_predict.pacs_source(user)  # a logged-in reader's look at a PACS image (de-identified)
if from_pacs is None:
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
else:
    data = from_pacs
try:
    view, prediction = predict_data.analysed_upload(predictor, data)
except ImageRejected as exc:
    st.error(str(exc))
    st.stop()

ood = predict_data.ood_verdict(prediction)  # the out-of-distribution gate's verdict, when it has one
flagged = ood is not None and ood.flagged
if flagged:
    st.error(f"No findings for this image: {plain(ood.reason)}", icon=":material/block:")
    show_anyway = st.toggle(
        "Show scores anyway",
        key="show_scores_anyway",
        help="The model's scores for an image it was not made for.",
    )
elif not verdict.validated:
    st.warning(
        f"Scores from a weak/unvalidated model, for testing the software only; they are not findings. "
        f"{plain(verdict.reason)} Findings need a {bar_text()}."
    )
presented = verdict.validated and not flagged

if flagged and not show_anyway:
    st.image(view.display, caption=f"Upload ({view.format}, {view.width}×{view.height})", width=360)
else:
    left, right = st.columns([5, 6])
    with left:
        scores_section(prediction, presented)
    with right:
        cam_section(prediction, view, data)

if from_pacs is None:  # a look at the PACS is not an import: nothing of it is stored
    send_to_review(upload.name, data)
