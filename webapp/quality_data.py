"""What the Label quality page reads and offers for download: the statistics of db.quality as tables
with readable cells, and the consensus-label exports (made when the button is clicked)."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
from sqlalchemy import Engine

from core.labels import FINDINGS
from db.engine import session_scope
from db.export import ExportFormat, export_labels_dataframe
from db.quality import LabelQuality, label_quality
from webapp.database import session
from webapp.formatting import pretty

TABLE_HEIGHT = (len(FINDINGS) + 1) * 35 + 3  # every finding without scrolling


def load_quality() -> LabelQuality:
    with session(read_only=True) as db_session:
        return label_quality(db_session)


def percent(value: float | None) -> str:
    return "–" if value is None or pd.isna(value) else f"{value:.1%}"


def number(value: float | None) -> str:
    return "–" if value is None or pd.isna(value) else f"{value:.2f}"


def overturn_table(findings: pd.DataFrame) -> pd.DataFrame:
    """Per finding: NLP positives the review made negative and NLP negatives it made positive."""
    return pd.DataFrame(
        {
            "Finding": findings["finding"].map(pretty),
            "Reviewed images": findings["n_reviewed"],
            "NLP positive": findings["nlp_positive"],
            "→ negative": findings["pos_to_neg"],
            "rate +→−": findings["pos_to_neg_rate"].map(percent),
            "NLP negative": findings["nlp_negative"],
            "→ positive": findings["neg_to_pos"],
            "rate −→+": findings["neg_to_pos_rate"].map(percent),
        }
    )


def agreement_table(findings: pd.DataFrame) -> pd.DataFrame:
    """Per finding: images read by two or more, kappa and its method, the share where all agree."""
    return pd.DataFrame(
        {
            "Finding": findings["finding"].map(pretty),
            "Images": findings["n_multi_read"],
            "Kappa": findings["kappa"].map(number),
            "Method": findings["kappa_method"].fillna("–"),
            "All readers agree": findings["percent_agreement"].map(percent),
        }
    )


def google_table(google: pd.DataFrame) -> pd.DataFrame:
    """Per Google finding: agreement and kappa of the reviewed and of the NLP labels with Google's."""
    return pd.DataFrame(
        {
            "Google finding": google["google_finding"],
            "ChestX-ray14 findings": google["chestxray14_findings"].map(lambda f: " | ".join(f)),
            "Reviewed images": google["n_reviewed"],
            "Reviewed: agreement": google["reviewed_agreement"].map(percent),
            "Reviewed: kappa": google["reviewed_kappa"].map(number),
            "NLP images": google["n_nlp"],
            "NLP: agreement": google["nlp_agreement"].map(percent),
            "NLP: kappa": google["nlp_kappa"].map(number),
        }
    )


def labels_csv(engine: Engine, export_format: ExportFormat) -> Callable[[], bytes]:
    """The export as CSV bytes, made when called: a download button calls it on click."""

    def make() -> bytes:
        # Runs in a thread of its own, outside the script run: no Streamlit calls, the engine passed in.
        with session_scope(engine, read_only=True) as export_session:
            table = export_labels_dataframe(export_session, export_format)
        return table.to_csv(index=False).encode()

    return make
