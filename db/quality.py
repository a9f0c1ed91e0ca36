"""Label-quality statistics of the clinician review.

Per finding:
- NLP overturns: on images with a reviewed label (source "adjudication" or "consensus", not excluded)
  and an NLP label, how many NLP positives the review made negative (pos_to_neg) and how many NLP
  negatives it made positive (neg_to_pos); the rates divide by the NLP positives / negatives.
- Inter-reader agreement on images with two or more reviews that do not exclude the image: when all
  of them were read by the same two readers, Cohen's kappa (sklearn); otherwise Fleiss' kappa,
  in its form for a varying number of readers per image (Fleiss, Levin & Paik 2003: per-image
  agreement P_i = sum_j n_ij (n_ij - 1) / (n_i (n_i - 1)), category shares over all ratings). Kappa
  is None when it is undefined (every rating in one category) or when there are no such images.
  `percent_agreement` is the share of those images on which all readers agree.

Against Google's adjudicated labels (Majkowska et al. 2019), on images with both, for the reviewed
labels and, as a baseline, the NLP labels. Google's findings map to ChestX-ray14 findings as follows
(a ChestX-ray14 label counts as positive when any of the mapped findings is positive):
    Pneumothorax      <-> Pneumothorax
    Nodule or mass    <-> Nodule | Mass
    Airspace opacity  <-> Consolidation | Pneumonia | Infiltration
                          (a judgement call: Edema and Atelectasis can also look like airspace opacity
                          and are left out; change GOOGLE_TO_CHESTXRAY14 to compare otherwise)
    Fracture          -- no ChestX-ray14 counterpart, not compared
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.labels import FINDINGS
from db.models import FINDING_COLUMNS, SOURCE_GOOGLE, SOURCE_NLP, Adjudication, NlpLabel, Review
from db.reviews import effective_labels

GOOGLE_TO_CHESTXRAY14: dict[str, tuple[str, ...]] = {
    "Pneumothorax": ("Pneumothorax",),
    "Nodule or mass": ("Nodule", "Mass"),
    "Airspace opacity": ("Consolidation", "Pneumonia", "Infiltration"),
}


@dataclass(frozen=True)
class FindingQuality:
    finding: str
    n_reviewed: int  # images with a reviewed label and an NLP label
    nlp_positive: int
    nlp_negative: int
    pos_to_neg: int
    neg_to_pos: int
    pos_to_neg_rate: float | None
    neg_to_pos_rate: float | None
    n_multi_read: int  # images with >= 2 non-excluding reviews
    kappa: float | None
    kappa_method: str | None  # "cohen" | "fleiss"
    percent_agreement: float | None


@dataclass(frozen=True)
class GoogleAgreement:
    google_finding: str
    chestxray14_findings: tuple[str, ...]
    n_reviewed: int
    reviewed_agreement: float | None
    reviewed_kappa: float | None
    n_nlp: int
    nlp_agreement: float | None
    nlp_kappa: float | None


@dataclass
class LabelQuality:
    n_reviewed_images: int
    n_adjudicated_images: int
    n_multi_read_images: int
    findings: list[FindingQuality] = field(default_factory=list)
    google: list[GoogleAgreement] = field(default_factory=list)

    def findings_frame(self) -> pd.DataFrame:
        return pd.DataFrame([asdict(row) for row in self.findings])

    def google_frame(self) -> pd.DataFrame:
        return pd.DataFrame([asdict(row) for row in self.google])


def fleiss_kappa(counts: np.ndarray | Sequence[Sequence[int]]) -> float | None:
    """Fleiss' kappa of a subjects x categories matrix of rating counts (each row sums to >= 2).

    Rows may have different totals (a varying number of raters per subject). None when undefined.
    """
    table = np.asarray(counts, dtype=float)
    if table.ndim != 2 or table.shape[0] == 0:
        return None
    raters = table.sum(axis=1)
    if np.any(raters < 2):
        raise ValueError("Every subject needs at least two ratings for Fleiss' kappa.")
    observed = ((table * (table - 1)).sum(axis=1) / (raters * (raters - 1))).mean()
    shares = table.sum(axis=0) / table.sum()
    expected = float((shares**2).sum())
    if math.isclose(expected, 1.0):
        return None
    return float((observed - expected) / (1 - expected))


def cohen_kappa(a: Sequence[int], b: Sequence[int]) -> float | None:
    """Cohen's kappa of two raters (sklearn); None when undefined (both always gave one same value)."""
    if len(a) == 0:
        return None
    if len(set(a) | set(b)) == 1:
        return None
    from sklearn.metrics import cohen_kappa_score

    value = float(cohen_kappa_score(list(a), list(b)))
    return None if math.isnan(value) else value


def _agreement(a: Sequence[int], b: Sequence[int]) -> tuple[float | None, float | None]:
    if not a:
        return None, None
    return float(np.mean(np.asarray(a) == np.asarray(b))), cohen_kappa(a, b)


def label_quality(session: Session) -> LabelQuality:
    reviewed_ids = set(session.scalars(select(Review.image_id).distinct()))
    adjudicated_ids = set(session.scalars(select(Adjudication.image_id)))
    google_rows = session.execute(
        select(NlpLabel.image_id, NlpLabel.extra).where(NlpLabel.source == SOURCE_GOOGLE)
    ).all()
    google = {image_id: extra or {} for image_id, extra in google_rows}
    labelled_ids = reviewed_ids | adjudicated_ids
    labels = effective_labels(session, sorted(labelled_ids | set(google)))
    nlp = _nlp_labels(session, sorted(labelled_ids | set(google)))

    reviewed = {
        image_id: labels[image_id]
        for image_id in labelled_ids
        if labels[image_id].source in ("adjudication", "consensus") and not labels[image_id].exclude
    }

    # Non-excluding reviews per image: {image: [(user, findings)]}
    reads: dict[int, list[tuple[int, dict[str, bool]]]] = defaultdict(list)
    review_cols = [Review.image_id, Review.user_id, *(getattr(Review, c) for c in FINDING_COLUMNS)]
    for image_id, user_id, *values in session.execute(select(*review_cols).where(~Review.exclude)):
        reads[image_id].append((user_id, dict(zip(FINDINGS, map(bool, values), strict=True))))
    multi = {image_id: rows for image_id, rows in reads.items() if len(rows) >= 2}
    reader_sets = {tuple(sorted(user for user, _ in rows)) for rows in multi.values()}
    same_two_readers = len(reader_sets) == 1 and len(next(iter(reader_sets))) == 2

    quality = LabelQuality(
        n_reviewed_images=len(reviewed_ids),
        n_adjudicated_images=len(adjudicated_ids),
        n_multi_read_images=len(multi),
    )
    for finding in FINDINGS:
        pairs = [(nlp[i][finding], label.findings[finding]) for i, label in reviewed.items() if i in nlp]
        nlp_pos = sum(1 for before, _ in pairs if before)
        nlp_neg = len(pairs) - nlp_pos
        pos_to_neg = sum(1 for before, after in pairs if before and not after)
        neg_to_pos = sum(1 for before, after in pairs if not before and after)

        kappa, method, percent = None, None, None
        if multi:
            if same_two_readers:
                ordered = [sorted(rows, key=lambda read: read[0]) for rows in multi.values()]
                kappa = cohen_kappa(
                    [int(rows[0][1][finding]) for rows in ordered],
                    [int(rows[1][1][finding]) for rows in ordered],
                )
                method = "cohen"
            else:
                counts = [
                    [sum(f[finding] for _, f in rows), sum(not f[finding] for _, f in rows)]
                    for rows in multi.values()
                ]
                kappa = fleiss_kappa(counts)
                method = "fleiss"
            percent = float(np.mean([len({f[finding] for _, f in rows}) == 1 for rows in multi.values()]))
        quality.findings.append(
            FindingQuality(
                finding=finding,
                n_reviewed=len(pairs),
                nlp_positive=nlp_pos,
                nlp_negative=nlp_neg,
                pos_to_neg=pos_to_neg,
                neg_to_pos=neg_to_pos,
                pos_to_neg_rate=pos_to_neg / nlp_pos if nlp_pos else None,
                neg_to_pos_rate=neg_to_pos / nlp_neg if nlp_neg else None,
                n_multi_read=len(multi),
                kappa=kappa,
                kappa_method=method,
                percent_agreement=percent,
            )
        )

    for google_finding, mapped in GOOGLE_TO_CHESTXRAY14.items():
        truth = {i: bool(v) for i, extra in google.items() if (v := extra.get(google_finding)) is not None}
        ours = [
            (int(truth[i]), int(any(reviewed[i].findings[f] for f in mapped))) for i in truth if i in reviewed
        ]
        theirs = [(int(truth[i]), int(any(nlp[i][f] for f in mapped))) for i in truth if i in nlp]
        reviewed_agreement, reviewed_kappa = _agreement([t for t, _ in ours], [o for _, o in ours])
        nlp_agreement, nlp_kappa = _agreement([t for t, _ in theirs], [o for _, o in theirs])
        quality.google.append(
            GoogleAgreement(
                google_finding=google_finding,
                chestxray14_findings=mapped,
                n_reviewed=len(ours),
                reviewed_agreement=reviewed_agreement,
                reviewed_kappa=reviewed_kappa,
                n_nlp=len(theirs),
                nlp_agreement=nlp_agreement,
                nlp_kappa=nlp_kappa,
            )
        )
    return quality


def _nlp_labels(session: Session, image_ids: list[int]) -> dict[int, dict[str, bool]]:
    columns = [NlpLabel.image_id, *(getattr(NlpLabel, c) for c in FINDING_COLUMNS)]
    found: dict[int, dict[str, bool]] = {}
    for start in range(0, len(image_ids), 2_000):
        chunk = image_ids[start : start + 2_000]
        statement = select(*columns).where(NlpLabel.source == SOURCE_NLP, NlpLabel.image_id.in_(chunk))
        for image_id, *values in session.execute(statement):
            found[image_id] = dict(zip(FINDINGS, map(bool, values), strict=True))
    return found
