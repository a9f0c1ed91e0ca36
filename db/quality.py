"""Label-quality statistics of the clinician review.

Per finding:
- NLP overturns: on images with a reviewed label (source "adjudication" or "consensus", not excluded)
  and an NLP label, how many NLP positives the review made negative (pos_to_neg) and how many NLP
  negatives it made positive (neg_to_pos); the rates divide by the NLP positives / negatives.
- Inter-reader agreement from blinded reads only (`Review.blinded`: a reader who saw another's answer
  is not independent and would inflate agreement), on images with two or more blinded reviews that do
  not exclude the image: when all of them were read by the same two readers, Cohen's kappa;
  otherwise Fleiss' kappa,
  in its form for a varying number of readers per image (Fleiss, Levin & Paik 2003: per-image
  agreement P_i = sum_j n_ij (n_ij - 1) / (n_i (n_i - 1)), category shares over all ratings). Kappa
  is None when it is undefined (every rating in one category) or when there are no such images.
  `percent_agreement` is the share of those images on which all readers agree. `n_multi_read` and
  `n_blinded_reads` are the images and the reads it rests on.

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
from sqlalchemy import Float, and_, case, cast, false, func, or_, select
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
    finding_column,
)
from db.reader_stats import cohen_from_table

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
    n_multi_read: int  # images with >= 2 blinded, non-excluding reviews (what kappa rests on)
    n_blinded_reads: int  # those images' blinded, non-excluding reviews
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
    n_multi_read_images: int  # images with >= 2 blinded, non-excluding reviews
    n_blinded_reads: int = 0  # their blinded, non-excluding reviews
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
    """Cohen's kappa of two raters; None when undefined (both always gave one same value). From their
    table of counts (db.reader_stats), not sklearn, whose import alone takes ~1.5 s of a first page."""
    if len(a) == 0:
        return None
    values, codes = np.unique(np.concatenate([np.asarray(a), np.asarray(b)]), return_inverse=True)
    table = np.zeros((len(values), len(values)))
    np.add.at(table, (codes[: len(a)], codes[len(a) :]), 1)
    return cohen_from_table(table)


def _agreement(a: Sequence[int], b: Sequence[int]) -> tuple[float | None, float | None]:
    if not a:
        return None, None
    return float(np.mean(np.asarray(a) == np.asarray(b))), cohen_kappa(a, b)


def label_quality(session: Session) -> LabelQuality:
    """The statistics above, aggregated in SQL: four statements, each returning one row."""
    n_reviewed = select(func.count()).where(ReviewedLabel.n_reviews > 0).scalar_subquery()
    n_adjudicated = select(func.count()).select_from(Adjudication).scalar_subquery()
    reviewed_images, adjudicated_images = session.execute(select(n_reviewed, n_adjudicated)).one()
    overturns = _overturns(session)
    multi = _multi_reads(session)
    quality = LabelQuality(int(reviewed_images), int(adjudicated_images), multi.n_images, multi.ratings)
    for finding in FINDINGS:
        n_pairs, nlp_pos, pos_to_neg, neg_to_pos = overturns[finding]
        nlp_neg = n_pairs - nlp_pos
        kappa, method, percent = None, None, None
        if multi.n_images:
            if multi.same_two_readers:
                first, second = multi.reader_values(finding)
                kappa, method = cohen_kappa(first, second), "cohen"
            else:
                kappa, method = multi.fleiss(finding), "fleiss"
            percent = multi.all_agree[finding] / multi.n_images
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
                n_multi_read=multi.n_images,
                n_blinded_reads=multi.ratings,
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
class _MultiReads:
    """Sums over the images with two or more blinded reviews that do not exclude them (a = readers marking
    the finding, n = readers): what Fleiss' kappa, Cohen's kappa and the share of agreement need."""

    n_images: int
    same_two_readers: bool  # every such image read by the same two readers
    agreement_sum: dict[str, float]  # sum of P_i = (a(a-1) + (n-a)(n-a-1)) / (n(n-1))
    positives: dict[str, int]  # sum of a
    ratings: int  # sum of n
    all_agree: dict[str, int]  # images with a = 0 or a = n
    cells: dict[str, tuple[int, int, int, int]]  # two readers: (both, first only, second only, neither)

    def fleiss(self, finding: str) -> float | None:
        """fleiss_kappa of the [a, n - a] table, from its sums."""
        observed = self.agreement_sum[finding] / self.n_images
        share = self.positives[finding] / self.ratings
        expected = share**2 + (1 - share) ** 2
        if math.isclose(expected, 1.0):
            return None
        return float((observed - expected) / (1 - expected))

    def reader_values(self, finding: str) -> tuple[list[int], list[int]]:
        both, first_only, second_only, neither = self.cells[finding]
        first = [1] * (both + first_only) + [0] * (second_only + neither)
        second = [1] * both + [0] * first_only + [1] * second_only + [0] * neither
        return first, second


def _multi_reads(session: Session) -> _MultiReads:
    per_image = [
        Review.image_id,
        func.count().label("n"),
        func.min(Review.user_id).label("first"),
        func.max(Review.user_id).label("last"),
    ]
    for column in FINDING_COLUMNS:
        marked = getattr(Review, column)
        per_image.append(_count_if(marked).label(f"a_{column}"))
        # Who marked it, when exactly one of two readers did: the sum of the markers' user ids.
        per_image.append(
            func.coalesce(func.sum(case((marked, Review.user_id), else_=0)), 0).label(f"u_{column}")
        )
    reads = (
        select(*per_image)
        .where(Review.blinded, ~Review.exclude)
        .group_by(Review.image_id)
        .having(func.count() >= 2)
    ).subquery("reads")
    n = reads.c.n
    columns = [func.count(), func.coalesce(func.sum(n), 0), func.min(n), func.max(n)]
    columns += [
        func.min(reads.c.first),
        func.max(reads.c.first),
        func.min(reads.c.last),
        func.max(reads.c.last),
    ]
    for column in FINDING_COLUMNS:
        a, marker = reads.c[f"a_{column}"], reads.c[f"u_{column}"]
        p_i = cast(a * (a - 1) + (n - a) * (n - a - 1), Float) / cast(n * (n - 1), Float)
        columns += [
            func.coalesce(func.sum(p_i), 0.0),
            func.coalesce(func.sum(a), 0),
            _count_if(or_(a == 0, a == n)),
            _count_if(a == 2),
            _count_if(and_(a == 1, marker == reads.c.first)),
            _count_if(and_(a == 1, marker != reads.c.first)),
            _count_if(a == 0),
        ]
    n_images, ratings, fewest, most, *rest = session.execute(select(*columns).select_from(reads)).one()
    first_low, first_high, last_low, last_high, *sums = rest
    same = bool(n_images) and fewest == most == 2 and first_low == first_high and last_low == last_high
    agreement, positives, agree, cells = {}, {}, {}, {}
    for i, finding in enumerate(FINDINGS):
        p_sum, a_sum, all_agree, *cell = sums[7 * i : 7 * i + 7]
        agreement[finding], positives[finding], agree[finding] = float(p_sum), int(a_sum), int(all_agree)
        cells[finding] = tuple(int(c) for c in cell)
    return _MultiReads(int(n_images), same, agreement, positives, int(ratings), agree, cells)  # type: ignore[arg-type]


def _google_agreement(session: Session) -> list[GoogleAgreement]:
    """Google's labels against the reviewed labels and the NLP labels: 2x2 tables counted in SQL."""
    google = aliased(NlpLabel, name="google")
    usable = and_(ReviewedLabel.image_id.is_not(None), ~ReviewedLabel.exclude)  # a label that keeps the image
    has_nlp = NLP.id.is_not(None)
    columns = []
    for google_finding, mapped in GOOGLE_TO_CHESTXRAY14.items():
        truth = google.extra[google_finding].as_boolean()
        ours = or_(*(getattr(ReviewedLabel, finding_column(f)) for f in mapped))
        theirs = or_(*(func.coalesce(getattr(NLP, finding_column(f)), false()) for f in mapped))
        for present, value in ((usable, ours), (has_nlp, theirs)):
            for t, v in ((True, True), (True, False), (False, True), (False, False)):
                columns.append(_count_if(and_(present, truth == t, value if v else ~value)))
    statement = (
        select(*columns)
        .select_from(google)
        .outerjoin(ReviewedLabel, ReviewedLabel.image_id == google.image_id)
        .outerjoin(NLP, and_(NLP.image_id == google.image_id, NLP.source == SOURCE_NLP))
        .where(google.source == SOURCE_GOOGLE)
    )
    counts = [int(c) for c in session.execute(statement).one()]
    rows = []
    for g, (google_finding, mapped) in enumerate(GOOGLE_TO_CHESTXRAY14.items()):
        ours_truth, ours_value = _expand(counts[8 * g : 8 * g + 4])
        nlp_truth, nlp_value = _expand(counts[8 * g + 4 : 8 * g + 8])
        reviewed_agreement, reviewed_kappa = _agreement(ours_truth, ours_value)
        nlp_agreement, nlp_kappa = _agreement(nlp_truth, nlp_value)
        rows.append(
            GoogleAgreement(
                google_finding=google_finding,
                chestxray14_findings=mapped,
                n_reviewed=len(ours_truth),
                reviewed_agreement=reviewed_agreement,
                reviewed_kappa=reviewed_kappa,
                n_nlp=len(nlp_truth),
                nlp_agreement=nlp_agreement,
                nlp_kappa=nlp_kappa,
            )
        )
    return rows


def _expand(cells: Sequence[int]) -> tuple[list[int], list[int]]:
    """A 2x2 table (truth/value: 1/1, 1/0, 0/1, 0/0) as the two lists of values it counts."""
    both, truth_only, value_only, neither = cells
    truth = [1] * (both + truth_only) + [0] * (value_only + neither)
    value = [1] * both + [0] * truth_only + [1] * value_only + [0] * neither
    return truth, value
