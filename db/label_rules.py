"""The review label's types and rules, below every module that saves or reads labels.

What a reader may say (`validate_label`, `validate_reasons`, REASON_CODES), the effective label of an
image (EffectiveLabel and the `consensus` of reviewers' votes; the rules are in db.reviews' module doc),
per-finding states, and the review queue's item and argument checks. Only db.models and db.errors
below it, so db.effective, db.adjudication, db.assignments, db.review_queue and db.reviews can all
build on it without importing one another back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from core.labels import FINDINGS, NO_FINDING
from db.errors import DbUserError, InvalidLabelError
from db.models import Adjudication, Review, findings_in, findings_of

LabelSource = Literal["adjudication", "consensus", "nlp", "none"]
QueueStrategy = Literal["disagreement", "unreviewed", "random", "finding", "split"]
QUEUE_STRATEGIES: tuple[str, ...] = ("disagreement", "unreviewed", "random", "finding", "split")
# Why a finding is Uncertain or differs from the report: optional codes a reader attaches to a finding.
REASON_CODES: dict[str, str] = {
    "not_visible": "Not visible on this image",
    "report_only": "Report-only finding",
    "poor_quality": "Poor image quality",
    "wrong_view": "Wrong view or body part",
    "borderline": "Subtle or borderline",
}


class QueueError(DbUserError, ValueError):
    """A review queue that cannot be built as asked (one human sentence)."""


@dataclass(frozen=True)
class EffectiveLabel:
    findings: dict[str, bool]  # all 14, FINDINGS order
    no_finding: bool
    exclude: bool
    source: LabelSource
    n_reviews: int
    disputed: tuple[str, ...] = ()  # findings (and "exclude") the readers differ on, unadjudicated
    uncertain: tuple[str, ...] = ()  # findings whose effective state is Uncertain

    @property
    def positives(self) -> list[str]:
        return [finding for finding, positive in self.findings.items() if positive]

    @property
    def finding_labels(self) -> str:
        """Data_Entry spelling: "A|B" or "No Finding"."""
        return "|".join(self.positives) or NO_FINDING


@dataclass(frozen=True)
class QueueItem:
    image_id: int
    image_index: str | None
    split: str | None
    n_reviews: int  # reviews by anyone
    score: float | None = None  # "disagreement": max over findings of |probability - effective label|
    top_finding: str | None = None  # "disagreement": the finding where that maximum is


# ----------------------------------------------------------------------------------------------------
# Label values


def validate_label(
    findings: Mapping[str, bool], no_finding: bool, exclude: bool, *, uncertain: Iterable[str] = ()
) -> dict[str, bool]:
    """All 14 findings as booleans (missing ones False); raises InvalidLabelError with a sentence.

    `uncertain`: the findings the reader marked Uncertain (neither Present nor Absent).
    """
    uncertain = set(uncertain)
    unknown = sorted((set(findings) | uncertain) - set(FINDINGS))
    if unknown:
        raise InvalidLabelError(f"Unknown finding(s): {', '.join(unknown)}.")
    clean = {finding: bool(findings.get(finding, False)) for finding in FINDINGS}
    positives = [finding for finding, positive in clean.items() if positive]
    both = [finding for finding in positives if finding in uncertain]
    if both:
        raise InvalidLabelError(f"A finding is either Present or Uncertain, not both ({', '.join(both)}).")
    if no_finding and (positives or uncertain):
        named = positives + sorted(uncertain, key=FINDINGS.index)
        raise InvalidLabelError(
            f"“No Finding” cannot be combined with findings ({', '.join(named)}); untick one or the other."
        )
    if not no_finding and not positives and not uncertain and not exclude:
        raise InvalidLabelError("Tick at least one finding or “No Finding”, or exclude the image.")
    return clean


def validate_reasons(reasons: Mapping[str, Iterable[str]] | None) -> dict[str, list[str]] | None:
    """{finding: [reason code, ...]} with known findings and codes only (None when empty)."""
    clean: dict[str, list[str]] = {}
    for finding, codes in (reasons or {}).items():
        if finding not in FINDINGS:
            raise InvalidLabelError(f"Unknown finding {finding!r} in the reasons.")
        codes = sorted(set(codes))
        unknown = [code for code in codes if code not in REASON_CODES]
        if unknown:
            raise InvalidLabelError(f"Unknown reason code(s): {', '.join(unknown)}.")
        if codes:
            clean[finding] = codes
    return {finding: clean[finding] for finding in FINDINGS if finding in clean} or None


def label_state(row: Review | Adjudication) -> dict[str, Any]:
    """The audit-trail snapshot of a review or adjudication."""
    return {
        "findings": {finding: bool(value) for finding, value in findings_of(row).items()},
        "uncertain": list(findings_in(row.uncertain_mask)),
        "reasons": dict(row.reasons or {}),
        "no_finding": bool(row.no_finding),
        "exclude": bool(row.exclude),
        "comment": row.comment,
        "version": row.version,
    }


def finding_states(row: Review | Adjudication) -> dict[str, str]:
    """{finding: "present" | "absent" | "uncertain"} of a review or adjudication, in FINDINGS order."""
    uncertain = set(findings_in(row.uncertain_mask))
    return {
        finding: "uncertain" if finding in uncertain else "present" if value else "absent"
        for finding, value in findings_of(row).items()
    }


def consensus(votes: Sequence[tuple[Mapping[str, bool], bool]]) -> tuple[dict[str, bool], bool]:
    """(findings, exclude) of reviewers' votes [(findings, exclude), ...]; rules in the module doc.

    These are the values `reviewed_labels` holds; where the votes differ the image is disputed
    (db.adjudication.dispute_mask), which the pages, exports and the trainer's labels say.
    """
    excluded = sum(1 for _, exclude in votes if exclude)
    exclude = 2 * excluded > len(votes)
    readers = [findings for findings, exclude in votes if not exclude]
    findings = {
        finding: 2 * sum(1 for votes_of in readers if votes_of.get(finding, False)) > len(readers)
        for finding in FINDINGS
    }
    return findings, exclude


def check_queue_arguments(strategy: str, finding: str | None, split: str | None) -> None:
    if strategy not in QUEUE_STRATEGIES:
        raise QueueError(f"Unknown queue {strategy!r}; choose one of {', '.join(QUEUE_STRATEGIES)}.")
    if strategy == "finding" and finding not in FINDINGS:
        raise QueueError("The finding queue needs one of the 14 findings to be chosen.")
    if strategy == "split" and not split:
        raise QueueError("The split queue needs a split (train_val or test) to be chosen.")
