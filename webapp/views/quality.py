"""Label quality: how the clinicians' review changed the NLP labels, how much readers agree, how the
labels compare with Google's adjudicated ones; admins export the consensus labels here."""

from __future__ import annotations

import streamlit as st

from webapp.auth import require_role

user = require_role("clinician", "admin")

from webapp import quality_data  # noqa: E402
from webapp.database import engine_or_stop  # noqa: E402
from webapp.quality_charts import google_bars, kappa_bars, overturn_bars  # noqa: E402
from webapp.quality_data import TABLE_HEIGHT  # noqa: E402

st.title("Label quality")
st.caption(
    "How the clinicians' review changed ChestX-ray14's NLP-mined labels, how much readers agree with each "
    "other, and how the labels compare with Google's radiologist-adjudicated labels (Majkowska et al. 2019)."
)

engine = engine_or_stop()
quality = quality_data.load_quality()
findings = quality.findings_frame()
google = quality.google_frame()

counts = st.columns(3)
counts[0].metric("Reviewed images", f"{quality.n_reviewed_images:,}")
counts[1].metric("Adjudicated images", f"{quality.n_adjudicated_images:,}")
counts[2].metric(
    "Read by two or more",
    f"{quality.n_multi_read_images:,}",
    help="Images with at least two reviews that do not exclude the image: the basis of kappa.",
)
if quality.n_reviewed_images == 0 and quality.n_adjudicated_images == 0:
    st.info("No image has been reviewed yet; the statistics below fill in as clinicians review images.")

overturns_tab, agreement_tab, google_tab = st.tabs(
    ["NLP labels overturned", "Inter-reader agreement", "Google's adjudicated labels"]
)
with overturns_tab:
    st.caption(
        "On reviewed images (consensus or adjudicated, not excluded): the share of NLP positives the review "
        "made negative, and of NLP negatives it made positive."
    )
    st.plotly_chart(overturn_bars(findings), key="quality_overturns", width="stretch")
    st.dataframe(quality_data.overturn_table(findings), hide_index=True, width="stretch", height=TABLE_HEIGHT)

with agreement_tab:
    st.caption(
        "Images read by two or more clinicians. Cohen's kappa when every such image was read by the same "
        "two readers, Fleiss' kappa otherwise; empty where kappa is undefined (one answer from everybody)."
    )
    st.plotly_chart(kappa_bars(findings), key="quality_kappa", width="stretch")
    st.dataframe(
        quality_data.agreement_table(findings), hide_index=True, width="stretch", height=TABLE_HEIGHT
    )

with google_tab:
    st.caption(
        "Images that also have Google's labels. Nodule or mass counts as positive when Nodule or Mass is; "
        "Airspace opacity when Consolidation, Pneumonia or Infiltration is. The NLP labels are the baseline."
    )
    st.plotly_chart(google_bars(google), key="quality_google", width="stretch")
    st.dataframe(quality_data.google_table(google), hide_index=True, width="stretch")

if user.role == "admin":
    st.subheader("Export the consensus labels", anchor=False)
    st.caption(
        "The effective label of every labelled image: an admin's adjudication, else the reviewers' "
        "consensus, else the NLP label. The file is made when you click, from the labels as they are then."
    )
    downloads = st.columns(2)
    downloads[0].download_button(
        "Data_Entry CSV (Finding Labels)",
        quality_data.labels_csv(engine, "data-entry"),
        file_name="Data_Entry_reviewed.csv",
        mime="text/csv",
        icon=":material/download:",
        key="export_data_entry",
        width="stretch",
        help="Shaped like NIH's Data_Entry_2017.csv: Image Index, Finding Labels, Patient ID, View Position, "
        "Reviewer Count, Exclude.",
    )
    downloads[1].download_button(
        "Trainer labels table (0/1 per finding)",
        quality_data.labels_csv(engine, "trainer"),
        file_name="labels_reviewed.csv",
        mime="text/csv",
        icon=":material/download:",
        key="export_trainer",
        width="stretch",
        help="image_index, the 14 findings as 0/1, exclude: the table the fine-tuning takes.",
    )
