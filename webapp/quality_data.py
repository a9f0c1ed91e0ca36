"""What the Label quality page reads and offers for download: the statistics of db.quality and of
db.reader_stats (blinded reads: kappa with its 95 % interval and n) as tables with readable cells,
heat-map feedback per model, and the label exports (made when the button is clicked). A figure resting
on fewer than MIN_POSITIVES positives says "too few" instead of a number."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import streamlit as st
from sqlalchemy import Engine

from core.labels import FINDINGS
from db import cam_feedback, changes, reader_stats
from db.engine import default_url, session_scope
from db.export import ExportFormat, export_labels_dataframe
from db.quality import LabelQuality, label_quality
from db.reader_stats import MIN_POSITIVES, Kappa
from db.study_mode_agreement import ModeAgreement, nlp_agreement_by_mode
from webapp.database import session
from webapp.formatting import pretty

TABLE_HEIGHT = (len(FINDINGS) + 1) * 35 + 3  # every finding without scrolling


def load_quality() -> LabelQuality:
    """The label statistics, recomputed only when a label or an image changed (db.changes.labels_token:
    one millisecond statement), not on every rerun: they aggregate every label of the dataset."""
    return _quality(default_url(), _labels_token())


@st.cache_data(show_spinner="Counting labels…", max_entries=4)
def _quality(url_key: str, token: tuple) -> LabelQuality:
    with session(read_only=True) as db_session:
        return label_quality(db_session)


def percent(value: float | None) -> str:
    return "–" if value is None or pd.isna(value) else f"{value:.1%}"


def number(value: float | None) -> str:
    return "–" if value is None or pd.isna(value) else f"{value:.2f}"


def rate_text(rate: float | None, n: int) -> str:
    """A rate with its denominator; "too few" below MIN_POSITIVES."""
    if rate is None or pd.isna(rate):
        return "–"
    return f"too few (n = {n})" if n < MIN_POSITIVES else f"{rate:.1%} (n = {n:,})"


def overturn_table(findings: pd.DataFrame) -> pd.DataFrame:
    """Per finding: NLP positives the review made negative and NLP negatives it made positive."""
    return pd.DataFrame(
        {
            "Finding": findings["finding"].map(pretty),
            "Reviewed images": findings["n_reviewed"],
            "NLP positive": findings["nlp_positive"],
            "→ negative": findings["pos_to_neg"],
            "rate +→−": [
                rate_text(r, n)
                for r, n in zip(findings["pos_to_neg_rate"], findings["nlp_positive"], strict=True)
            ],
            "NLP negative": findings["nlp_negative"],
            "→ positive": findings["neg_to_pos"],
            "rate −→+": [
                rate_text(r, n)
                for r, n in zip(findings["neg_to_pos_rate"], findings["nlp_negative"], strict=True)
            ],
        }
    )


def kappa_text(kappa: Kappa) -> str:
    """ "0.62 (0.41 to 0.80)", "too few positives (3)" or "–" (undefined)."""
    if kappa.n == 0:
        return "–"
    if kappa.too_few:
        return f"too few positives ({kappa.positives})"
    if kappa.value is None:
        return "undefined (one answer from everybody)"
    interval = "" if kappa.low is None else f" ({kappa.low:.2f} to {kappa.high:.2f})"
    return f"{kappa.value:.2f}{interval}"


def _labels_token() -> tuple:
    with session(read_only=True) as db_session:
        return changes.labels_token(db_session)


def load_reader_stats() -> tuple[dict[str, Kappa], list, list]:
    """Kappas and reading times, recomputed only when a label changed (like load_quality)."""
    return _reader_stats(default_url(), _labels_token())


@st.cache_data(show_spinner="Comparing readers…", max_entries=4)
def _reader_stats(url_key: str, token: tuple) -> tuple[dict[str, Kappa], list, list]:
    with session(read_only=True) as db_session:
        return (
            reader_stats.inter_reader_agreement(db_session),
            reader_stats.reader_agreement(db_session),
            reader_stats.reading_times(db_session),
        )


MODE_NAMES = {"ai_first": "AI shown first", "ai_hidden": "AI hidden", "": "not recorded (older reviews)"}


def load_mode_agreement() -> list[ModeAgreement]:
    return _mode_agreement(default_url(), _labels_token())


@st.cache_data(show_spinner=False, max_entries=4)
def _mode_agreement(url_key: str, token: tuple) -> list[ModeAgreement]:
    with session(read_only=True) as db_session:
        return nlp_agreement_by_mode(db_session)


def mode_agreement_table(modes: list[ModeAgreement]) -> pd.DataFrame:
    """Per way of reading (AI shown first or hidden): blinded reads, agreement with the NLP label, and
    Cohen's kappa against it for each finding."""
    rows: dict[str, list] = {"Read with": [MODE_NAMES.get(m.study_mode, m.study_mode) for m in modes]}
    rows["Reads"] = [m.reads for m in modes]
    rows["Same answer as the NLP label"] = [percent(m.agreement) for m in modes]
    for finding in FINDINGS:
        rows[f"{pretty(finding)} kappa"] = [kappa_text(m.by_finding[finding]) for m in modes]
    return pd.DataFrame(rows)


def inter_reader_table(kappas: dict[str, Kappa]) -> pd.DataFrame:
    """Per finding: Fleiss' kappa of the blinded reads, its interval, n images, positives, agreement."""
    return pd.DataFrame(
        {
            "Finding": [pretty(f) for f in kappas],
            "Fleiss' kappa (95% CI)": [kappa_text(k) for k in kappas.values()],
            "Images": [k.n for k in kappas.values()],
            "Present answers": [k.positives for k in kappas.values()],
            "All readers agree": [percent(k.agreement) for k in kappas.values()],
        }
    )


def reader_table(rows: list) -> pd.DataFrame:
    """Per reader and finding: Cohen's kappa against the reference, n reads, positives, agreement."""
    return pd.DataFrame(
        {
            "Reader": [r.username for r in rows],
            "Finding": [pretty(r.finding) for r in rows],
            "Cohen's kappa (95% CI)": [kappa_text(r.kappa) for r in rows],
            "Reads": [r.kappa.n for r in rows],
            "Reference positives": [r.kappa.positives for r in rows],
            "Same answer": [percent(r.kappa.agreement) for r in rows],
        }
    )


def reading_time_table(rows: list) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "Reader": [r.username for r in rows],
            "Timed reads": [r.n for r in rows],
            "Median s per image": [number(r.median_s) for r in rows],
            "Mean s per image": [number(r.mean_s) for r in rows],
        }
    )


def cam_feedback_table() -> pd.DataFrame:
    """Per model (and finding): how often readers said the heat map points at the finding."""
    with session(read_only=True) as db_session:
        rows = cam_feedback.agreement_by_model(db_session)
    return pd.DataFrame(
        {
            "Model": [r.model_name for r in rows],
            "Finding": ["all findings" if r.finding is None else pretty(r.finding) for r in rows],
            "Verdicts": [r.n for r in rows],
            "Points at the finding": [rate_text(r.share, r.n) for r in rows],
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
