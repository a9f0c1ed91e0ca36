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
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import and_, case, false, func, select
from sqlalchemy.orm import Session, aliased

from core.labels import FINDINGS
from db.effective import NLP
from db.models import (
    FINDING_COLUMNS,
    SOURCE_GOOGLE,
    SOURCE_NLP,
    Adjudication,
    NlpLabel,
    Review,
    ReviewedLabel,
)

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
    """The statistics above, aggregated in SQL: five statements and a few thousand small rows at most."""
    n_reviewed = session.scalar(select(func.count()).where(ReviewedLabel.n_reviews > 0))
    quality = LabelQuality(
        n_reviewed_images=int(n_reviewed or 0),
        n_adjudicated_images=int(session.scalar(select(func.count()).select_from(Adjudication)) or 0),
        n_multi_read_images=0,
    )
    overturns = _overturns(session)
    multi = _multi_reads(session)
    quality.n_multi_read_images = len(multi)
    readers = {(row.first_reader, row.last_reader) for row in multi}
    same_two_readers = len(readers) == 1 and all(row.n == 2 for row in multi)
    for finding in FINDINGS:
        n_pairs, nlp_pos, pos_to_neg, neg_to_pos = overturns[finding]
        nlp_neg = n_pairs - nlp_pos
        kappa, method, percent = None, None, None
        if multi:
            positives = [row.positives[finding] for row in multi]
            if same_two_readers:
                # Two reads per image: the first reader's value is known from the count of positives
                # and, when exactly one was positive, from who that was.
                first = [
                    int(p == 2 or (p == 1 and row.positive_reader[finding] == row.first_reader))
                    for p, row in zip(positives, multi, strict=True)
                ]
                kappa = cohen_kappa(first, [p - f for p, f in zip(positives, first, strict=True)])
                method = "cohen"
            else:
                counts = [[p, row.n - p] for p, row in zip(positives, multi, strict=True)]
                kappa = fleiss_kappa(counts)
                method = "fleiss"
            percent = float(np.mean([p in (0, row.n) for p, row in zip(positives, multi, strict=True)]))
        quality.findings.append(
            FindingQuality(
                finding=finding,
                n_reviewed=n_pairs,
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
    quality.google = _google_agreement(session)
    return quality


def _count_if(condition: Any) -> Any:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def _overturns(session: Session) -> dict[str, tuple[int, int, int, int]]:
    """finding -> (reviewed images with an NLP label, NLP positives, positive->negative, negative->positive),
    over the reviewed labels (adjudication or consensus) that do not exclude the image."""
    columns = [func.count()]
    for column in FINDING_COLUMNS:
        reviewed, nlp = getattr(ReviewedLabel, column), func.coalesce(getattr(NLP, column), false())
        columns += [_count_if(nlp), _count_if(and_(nlp, ~reviewed)), _count_if(and_(~nlp, reviewed))]
    statement = (
        select(*columns)
        .select_from(ReviewedLabel)
        .join(NLP, and_(NLP.image_id == ReviewedLabel.image_id, NLP.source == SOURCE_NLP))
        .where(~ReviewedLabel.exclude)
    )
    n, *values = session.execute(statement).one()
    return {
        finding: (int(n), *(int(v) for v in values[3 * i : 3 * i + 3]))  # type: ignore[misc]
        for i, finding in enumerate(FINDINGS)
    }


@dataclass(frozen=True)
class _MultiRead:
    n: int  # reviews that do not exclude the image
    first_reader: int  # lowest and highest user id among them
    last_reader: int
    positives: dict[str, int]  # finding -> how many of them marked it
    positive_reader: dict[str, int]  # finding -> sum of the user ids that marked it


def _multi_reads(session: Session) -> list[_MultiRead]:
    """Per image read by two or more readers without excluding it: the counts kappa needs."""
    columns = [func.count(), func.min(Review.user_id), func.max(Review.user_id)]
    for column in FINDING_COLUMNS:
        marked = getattr(Review, column)
        columns += [_count_if(marked), func.coalesce(func.sum(case((marked, Review.user_id), else_=0)), 0)]
    statement = (
        select(*columns)
        .where(~Review.exclude)
        .group_by(Review.image_id)
        .having(func.count() >= 2)
        .order_by(Review.image_id)
    )
    reads = []
    for n, first, last, *values in session.execute(statement):
        positives = {f: int(values[2 * i]) for i, f in enumerate(FINDINGS)}
        readers = {f: int(values[2 * i + 1]) for i, f in enumerate(FINDINGS)}
        reads.append(_MultiRead(int(n), int(first), int(last), positives, readers))
    return reads


def _google_agreement(session: Session) -> list[GoogleAgreement]:
    """Google's labels against the reviewed labels and the NLP labels, image by image (a few thousand)."""
    google = aliased(NlpLabel, name="google")
    statement = (
        select(
            google.extra,
            ReviewedLabel.exclude,
            *(getattr(ReviewedLabel, c) for c in FINDING_COLUMNS),
            NLP.id,
            *(getattr(NLP, c) for c in FINDING_COLUMNS),
        )
        .select_from(google)
        .outerjoin(ReviewedLabel, ReviewedLabel.image_id == google.image_id)
        .outerjoin(NLP, and_(NLP.image_id == google.image_id, NLP.source == SOURCE_NLP))
        .where(google.source == SOURCE_GOOGLE)
    )
    n = len(FINDINGS)
    images = []
    for extra, exclude, *rest in session.execute(statement):
        usable = exclude is not None and not exclude  # a reviewed label that keeps the image
        reviewed = dict(zip(FINDINGS, map(bool, rest[:n]), strict=True)) if usable else None
        nlp = None if rest[n] is None else dict(zip(FINDINGS, map(bool, rest[n + 1 :]), strict=True))
        images.append((extra or {}, reviewed, nlp))
    rows = []
    for google_finding, mapped in GOOGLE_TO_CHESTXRAY14.items():
        ours, theirs = [], []
        for extra, reviewed, nlp in images:
            if (value := extra.get(google_finding)) is None:
                continue
            if reviewed is not None:
                ours.append((int(bool(value)), int(any(reviewed[f] for f in mapped))))
            if nlp is not None:
                theirs.append((int(bool(value)), int(any(nlp[f] for f in mapped))))
        reviewed_agreement, reviewed_kappa = _agreement([t for t, _ in ours], [o for _, o in ours])
        nlp_agreement, nlp_kappa = _agreement([t for t, _ in theirs], [o for _, o in theirs])
        rows.append(
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
    return rows
