"""Label quality: how the clinicians' review changed the NLP labels, how much readers agree (blinded
reads only, kappa with its 95 % interval and n), each reader's agreement and reading time, the readers'
verdicts on the heat maps, how the labels compare with Google's; admins export the labels here."""

from __future__ import annotations

import streamlit as st

from webapp.auth import require_role

user = require_role("clinician", "admin")

from webapp import quality_data  # noqa: E402
from webapp.database import engine_or_stop  # noqa: E402
from webapp.quality_charts import google_bars, kappa_bars, overturn_bars  # noqa: E402
from webapp.quality_data import MIN_POSITIVES, TABLE_HEIGHT  # noqa: E402

st.title("Label quality")
st.caption(
    "How the clinicians' review changed ChestX-ray14's NLP-mined labels, how much readers agree with each "
    "other, and how the labels compare with Google's radiologist-adjudicated labels (Majkowska et al. 2019)."
)

engine = engine_or_stop()
quality = quality_data.load_quality()
findings = quality.findings_frame()
google = quality.google_frame()
inter_reader, per_reader, reading = quality_data.load_reader_stats()

counts = st.columns(3)
counts[0].metric("Reviewed images", f"{quality.n_reviewed_images:,}")
counts[1].metric("Adjudicated images", f"{quality.n_adjudicated_images:,}")
blinded_multi = max((k.n for k in inter_reader.values()), default=0)
counts[2].metric(
    "Read blind by two or more",
    f"{blinded_multi:,}",
    help="Images with at least two blinded reviews that do not exclude the image: the basis of kappa.",
)
if quality.n_reviewed_images == 0 and quality.n_adjudicated_images == 0:
    st.info("No image has been reviewed yet; the statistics below fill in as clinicians review images.")

overturns_tab, agreement_tab, readers_tab, google_tab, cam_tab = st.tabs(
    ["NLP labels overturned", "Inter-reader agreement", "Readers", "Google's adjudicated labels", "Heat maps"]
)
with overturns_tab:
    st.caption(
        "On reviewed images (consensus or adjudicated, not excluded): the share of NLP positives the review "
        "made negative, and of NLP negatives it made positive, with n. Rates from fewer than "
        f"{MIN_POSITIVES} NLP labels say too few and are not drawn."
    )
    st.plotly_chart(overturn_bars(findings), key="quality_overturns", width="stretch")
    st.dataframe(quality_data.overturn_table(findings), hide_index=True, width="stretch", height=TABLE_HEIGHT)

with agreement_tab:
    st.caption(
        "Blinded reads only (a reader who saw another's answer is not independent). Fleiss' kappa over the "
        "images read by two or more, each finding answered Present, Absent or Uncertain, with a 95% "
        f"bootstrap interval; fewer than {MIN_POSITIVES} present answers: too few."
    )
    st.plotly_chart(kappa_bars(inter_reader), key="quality_kappa", width="stretch")
    st.dataframe(
        quality_data.inter_reader_table(inter_reader), hide_index=True, width="stretch", height=TABLE_HEIGHT
    )

with readers_tab:
    st.caption(
        "Each reader's blinded answers against the reference: the admin's adjudication where there is one, "
        "else the majority of the image's other blinded readers (no reference where they tie). Cohen's kappa "
        f"with a 95% bootstrap interval; fewer than {MIN_POSITIVES} reference positives: too few."
    )
    st.dataframe(quality_data.reader_table(per_reader), hide_index=True, width="stretch")
    st.caption(
        "Agreement with the NLP label by how the read was made: the NLP label and the model shown before "
        "answering (AI first) or hidden until then. Readers who saw it agreeing more is the anchoring effect."
    )
    modes = quality_data.load_mode_agreement()
    st.dataframe(quality_data.mode_agreement_table(modes), hide_index=True, width="stretch")
    st.caption("Reading time per image: from opening the image to saving its review.")
    st.dataframe(quality_data.reading_time_table(reading), hide_index=True, width="stretch")

with cam_tab:
    st.caption(
        "Readers' verdicts on the heat maps (CAM) of the image's positive findings: does it point at the "
        "finding? Per model version and finding."
    )
    st.dataframe(quality_data.cam_feedback_table(), hide_index=True, width="stretch")

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
        "The effective label of every labelled image: an admin's adjudication, else the readers' agreement, "
        "else the NLP label. Images whose readers disagree and that no admin adjudicated are marked disputed "
        "(Label Status, Disputed Findings; `disputed` in the trainer table), Uncertain findings are listed. "
        "The file is made when you click, from the labels as they are then."
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
        help="image_index, the 14 findings as 0/1, exclude, uncertain, disputed: what fine-tuning takes.",
    )
