"""Dataset and label status for the Fine-tune page: how many images, how many reviewed, and how the
labels changed since the active model version was trained."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, case, false, func, or_, select
from sqlalchemy.orm import Session

from core.labels import FINDINGS
from db.effective import NLP
from db.models import FINDING_COLUMNS, SOURCE_NLP, Adjudication, Image, LabelEvent, NlpLabel, ReviewedLabel
from db.registry import get_active_version


@dataclass
class FindingStatus:
    finding: str
    nlp_positive: int  # images whose NLP label has the finding
    effective_positive: int  # images whose effective label has it (excluded images left out)
    changed: int  # reviewed images whose effective label differs from the NLP label on this finding
    changed_since_active: int  # of those, reviewed or adjudicated after the active version was created


@dataclass
class LabelStatus:
    n_images: int = 0
    n_dataset: int = 0
    n_uploads: int = 0
    by_split: dict[str, int] = field(default_factory=dict)
    n_with_nlp: int = 0
    n_reviewed: int = 0  # images with at least one review
    n_adjudicated: int = 0
    n_excluded: int = 0  # effective label says exclude
    n_changed: int = 0  # reviewed images whose effective label differs from NLP on some finding
    active_name: str | None = None
    active_created_at: dt.datetime | None = None
    n_label_events_since_active: int = 0
    n_images_changed_since_active: int = 0
    findings: list[FindingStatus] = field(default_factory=list)


def label_status(session: Session) -> LabelStatus:
    """Every figure aggregated in SQL: about eight statements, none returning more than a few rows.

    The dataset's own counts (images by source and split, NLP positives: full passes over the images)
    change only when images or NLP labels are added, so they are kept per database and recounted
    only then; the rest reads the reviewed labels (one row per reviewed image).
    """
    status = LabelStatus()
    dataset = _dataset_counts(session)
    status.n_images, status.n_dataset, status.n_uploads, n_with_nlp, nlp_positive = dataset[:5]
    status.by_split = dict(dataset[5])
    if not status.n_images:
        return status
    status.n_with_nlp = n_with_nlp
    status.n_adjudicated = int(session.scalar(select(func.count()).select_from(Adjudication)) or 0)

    active = get_active_version(session)
    # Images with a label event after the active version was created (none without an active version).
    recent = select(LabelEvent.image_id).distinct()
    if active is not None:
        status.active_name, status.active_created_at = active.name, active.created_at
        status.n_label_events_since_active = int(
            session.scalar(select(func.count()).where(LabelEvent.at > active.created_at)) or 0
        )
        recent = recent.where(LabelEvent.at > active.created_at)
    else:
        recent = recent.where(false())
    changed_recently = recent.subquery("changed_recently")
    since = changed_recently.c.image_id.is_not(None)

    # Reviewed labels (adjudication or consensus) against the NLP label of the same image.
    has_nlp = NLP.id.is_not(None)
    kept = ~ReviewedLabel.exclude
    columns: list[Any] = [_count_if(ReviewedLabel.n_reviews > 0), _count_if(ReviewedLabel.exclude)]
    differs = []
    for column in FINDING_COLUMNS:
        reviewed, nlp = getattr(ReviewedLabel, column), func.coalesce(getattr(NLP, column), false())
        differ = and_(has_nlp, reviewed != nlp)
        differs.append(differ)
        columns += [_count_if(and_(has_nlp, nlp)), _count_if(and_(kept, reviewed)), _count_if(differ)]
        columns.append(_count_if(and_(differ, since)))
    columns += [_count_if(or_(*differs)), _count_if(and_(or_(*differs), since))]
    statement = (
        select(*columns)
        .select_from(ReviewedLabel)
        .outerjoin(NLP, and_(NLP.image_id == ReviewedLabel.image_id, NLP.source == SOURCE_NLP))
        .outerjoin(changed_recently, changed_recently.c.image_id == ReviewedLabel.image_id)
    )
    n_reviewed, n_excluded, *per_finding, n_changed, n_changed_since = (
        int(v) for v in session.execute(statement).one()
    )
    status.n_reviewed, status.n_excluded = n_reviewed, n_excluded
    status.n_changed, status.n_images_changed_since_active = n_changed, n_changed_since
    for c, finding in enumerate(FINDINGS):
        nlp_under_reviews, reviewed_positive, changed, changed_since = per_finding[4 * c : 4 * c + 4]
        # Images without a reviewed label count with their NLP label (excluded ones never do).
        effective_positive = int(nlp_positive[c]) - nlp_under_reviews + reviewed_positive
        status.findings.append(
            FindingStatus(finding, int(nlp_positive[c]), effective_positive, changed, changed_since)
        )
    return status


_DatasetCounts = tuple[int, int, int, int, tuple[int, ...], tuple[tuple[str, int], ...]]
_dataset_cache: dict[tuple[Any, ...], _DatasetCounts] = {}


def _dataset_counts(session: Session) -> _DatasetCounts:
    """(images, dataset images, uploads, images with NLP labels, NLP positives per finding, by split)."""
    newest = select(func.max(Image.id)).scalar_subquery(), select(func.max(NlpLabel.id)).scalar_subquery()
    key = (str(session.get_bind().engine.url), *session.execute(select(*newest)).one())
    if key in _dataset_cache:
        return _dataset_cache[key]
    n_images = n_dataset = n_uploads = 0
    by_split: dict[str, int] = {}
    groups = select(Image.source, Image.split, func.count()).group_by(Image.source, Image.split)
    for source, split, count in session.execute(groups):  # one pass over the images for all three counts
        n_images += int(count)
        if source == "upload":
            n_uploads += int(count)
        else:
            n_dataset += int(count)
        by_split[str(split or "none")] = by_split.get(str(split or "none"), 0) + int(count)
    nlp_columns = [getattr(NlpLabel, c) for c in FINDING_COLUMNS]
    n_with_nlp, *positives = session.execute(
        select(func.count(), *(_count_if(column) for column in nlp_columns)).where(
            NlpLabel.source == SOURCE_NLP
        )
    ).one()
    counts = (
        n_images, n_dataset, n_uploads, int(n_with_nlp), tuple(int(p) for p in positives),
        tuple(sorted(by_split.items())),
    )  # fmt: skip
    if len(_dataset_cache) > 8:
        _dataset_cache.clear()
    _dataset_cache[key] = counts
    return counts


def _count_if(condition: Any) -> Any:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)
