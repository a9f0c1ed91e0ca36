"""Agreement with the NLP label split by how each read was made: AI-first (the NLP label pre-ticked and
the model shown) or AI-hidden (the reader answered unaided), as `Review.study_mode` records it for each
review (the study's setting, or the reader's own choice for their session).

The anchoring effect in one figure: readers who saw the NLP label agree with it more than readers who
did not. Blinded reads that keep the image only, as in db.reader_stats; per finding a 3 x 3 table of the
reader's answer (absent / present / uncertain) against the NLP label (absent / present), with Cohen's
kappa and its bootstrap interval from db.reader_stats.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy import Integer, and_, case, cast, false, func, literal, select, true, union_all
from sqlalchemy.orm import Session

from core.labels import FINDINGS
from db.models import FINDING_COLUMNS, SOURCE_NLP, NlpLabel, Review
from db.reader_stats import ABSENT, PRESENT, UNCERTAIN, Kappa, cohen_kappa


@dataclass(frozen=True)
class ModeAgreement:
    study_mode: str  # "ai_first" | "ai_hidden" ("" for reviews saved before modes were recorded)
    reads: int  # blinded reads that keep the image and have an NLP label
    agreement: float | None  # share of (read, finding) answers equal to the NLP label
    by_finding: dict[str, Kappa]


def nlp_agreement_by_mode(session: Session) -> list[ModeAgreement]:
    """One entry per study mode that has reads, in name order."""
    parts = []
    for index, column in enumerate(FINDING_COLUMNS):
        uncertain = Review.uncertain_mask.op("&")(1 << index) != 0
        answer = case((uncertain, UNCERTAIN), (getattr(Review, column) == true(), PRESENT), else_=ABSENT)
        reference = case((getattr(NlpLabel, column) == true(), PRESENT), else_=ABSENT)
        parts.append(
            select(
                Review.study_mode.label("mode"),
                literal(index).label("f"),
                cast(answer, Integer).label("r"),
                cast(reference, Integer).label("ref"),
            )  # fmt: skip
            .join(NlpLabel, and_(NlpLabel.image_id == Review.image_id, NlpLabel.source == SOURCE_NLP))
            .where(Review.blinded == true(), Review.exclude == false())
        )
    pairs = union_all(*parts).subquery("pairs")
    rows = session.execute(
        select(pairs.c.mode, pairs.c.f, pairs.c.r, pairs.c.ref, func.count()).group_by(
            pairs.c.mode, pairs.c.f, pairs.c.r, pairs.c.ref
        )
    ).all()
    tables: dict[str, np.ndarray] = {}
    for mode, f, r, ref, count in rows:
        table = tables.setdefault(mode or "", np.zeros((len(FINDINGS), 3, 3)))
        table[int(f), int(r), int(ref)] += int(count)
    result = []
    for mode, table in sorted(tables.items()):
        reads = int(table[0].sum())  # every read answers every finding
        agreeing = sum(float(np.trace(table[f])) for f in range(len(FINDINGS)))
        by_finding = {finding: cohen_kappa(table[f], seed=f) for f, finding in enumerate(FINDINGS)}
        result.append(ModeAgreement(mode, reads, agreeing / table.sum() if reads else None, by_finding))
    return result
