"""Label quality: how the clinicians' review changed the NLP labels, how much readers agree, how the
labels compare with Google's adjudicated ones; admins export the consensus labels here."""

from __future__ import annotations

import streamlit as st

from webapp.auth import require_role

user = require_role("clinician", "admin")

import pandas as pd  # noqa: E402

from core.labels import FINDINGS  # noqa: E402
from db.export import export_labels_dataframe  # noqa: E402
from db.quality import label_quality  # noqa: E402
from webapp.database import engine_or_stop, session  # noqa: E402
from webapp.quality_charts import google_bars, kappa_bars, overturn_bars  # noqa: E402

TABLE_HEIGHT = (len(FINDINGS) + 1) * 35 + 3  # every finding without scrolling

st.title("Label quality")
st.caption(
    "How the clinicians' review changed ChestX-ray14's NLP-mined labels, how much readers agree with each "
    "other, and how the labels compare with Google's radiologist-adjudicated labels (Majkowska et al. 2019)."
)

engine = engine_or_stop()
with session(read_only=True) as db_session:
    quality = label_quality(db_session)
findings = quality.findings_frame()
google = quality.google_frame()

counts = st.columns(3)
counts[0].metric("Reviewed images", f"{quality.n_reviewed_images:,}")
counts[1].metric("Adjudicated images", f"{quality.n_adjudicated_images:,}")
counts[2].metric("Read by two or more", f"{quality.n_multi_read_images:,}",
                 help="Images with at least two reviews that do not exclude the image: the basis of kappa.")
if quality.n_reviewed_images == 0 and quality.n_adjudicated_images == 0:
    st.info("No image has been reviewed yet; the statistics below fill in as clinicians review images.")


def percent(value) -> str:
    return "–" if value is None or pd.isna(value) else f"{value:.1%}"


def number(value) -> str:
    return "–" if value is None or pd.isna(value) else f"{value:.2f}"


overturns_tab, agreement_tab, google_tab = st.tabs(
    ["NLP labels overturned", "Inter-reader agreement", "Google's adjudicated labels"]
)
with overturns_tab:
    st.caption(
        "On reviewed images (consensus or adjudicated, not excluded): the share of NLP positives the review "
        "made negative, and of NLP negatives it made positive."
    )
    st.plotly_chart(overturn_bars(findings), key="quality_overturns", width="stretch")
    st.dataframe(
        pd.DataFrame({
            "Finding": findings["finding"].str.replace("_", " "),
            "Reviewed images": findings["n_reviewed"],
            "NLP positive": findings["nlp_positive"],
            "→ negative": findings["pos_to_neg"],
            "rate +→−": findings["pos_to_neg_rate"].map(percent),
            "NLP negative": findings["nlp_negative"],
            "→ positive": findings["neg_to_pos"],
            "rate −→+": findings["neg_to_pos_rate"].map(percent),
        }),
        hide_index=True, width="stretch", height=TABLE_HEIGHT,
    )  # fmt: skip

with agreement_tab:
    st.caption(
        "Images read by two or more clinicians. Cohen's kappa when every such image was read by the same "
        "two readers, Fleiss' kappa otherwise; empty where kappa is undefined (one answer from everybody)."
    )
    st.plotly_chart(kappa_bars(findings), key="quality_kappa", width="stretch")
    st.dataframe(
        pd.DataFrame({
            "Finding": findings["finding"].str.replace("_", " "),
            "Images": findings["n_multi_read"],
            "Kappa": findings["kappa"].map(number),
            "Method": findings["kappa_method"].fillna("–"),
            "All readers agree": findings["percent_agreement"].map(percent),
        }),
        hide_index=True, width="stretch", height=TABLE_HEIGHT,
    )  # fmt: skip

with google_tab:
    st.caption(
        "Images that also have Google's labels. Nodule or mass counts as positive when Nodule or Mass is; "
        "Airspace opacity when Consolidation, Pneumonia or Infiltration is. The NLP labels are the baseline."
    )
    st.plotly_chart(google_bars(google), key="quality_google", width="stretch")
    st.dataframe(
        pd.DataFrame({
            "Google finding": google["google_finding"],
            "ChestX-ray14 findings": google["chestxray14_findings"].map(lambda f: " | ".join(f)),
            "Reviewed images": google["n_reviewed"],
            "Reviewed: agreement": google["reviewed_agreement"].map(percent),
            "Reviewed: kappa": google["reviewed_kappa"].map(number),
            "NLP images": google["n_nlp"],
            "NLP: agreement": google["nlp_agreement"].map(percent),
            "NLP: kappa": google["nlp_kappa"].map(number),
        }),
        hide_index=True, width="stretch",
    )  # fmt: skip

if user.role == "admin":
    st.subheader("Export the consensus labels", anchor=False)
    st.caption(
        "The effective label of every labelled image: an admin's adjudication, else the reviewers' "
        "consensus, else the NLP label. The file is made when you click, from the labels as they are then."
    )

    def export_csv(export_format: str):
        def make() -> bytes:  # runs on click, in a thread of its own: no Streamlit calls here
            from db.engine import session_scope

            with session_scope(engine, read_only=True) as export_session:
                table = export_labels_dataframe(export_session, export_format)  # type: ignore[arg-type]
            return table.to_csv(index=False).encode()

        return make

    downloads = st.columns(2)
    downloads[0].download_button(
        "Data_Entry CSV (Finding Labels)", export_csv("data-entry"), file_name="Data_Entry_reviewed.csv",
        mime="text/csv", icon=":material/download:", key="export_data_entry", width="stretch",
        help="Shaped like NIH's Data_Entry_2017.csv: Image Index, Finding Labels, Patient ID, View Position, "
        "Reviewer Count, Exclude.",
    )  # fmt: skip
    downloads[1].download_button(
        "Trainer labels table (0/1 per finding)", export_csv("trainer"), file_name="labels_reviewed.csv",
        mime="text/csv", icon=":material/download:", key="export_trainer", width="stretch",
        help="image_index, the 14 findings as 0/1, exclude: the table the fine-tuning takes.",
    )  # fmt: skip
