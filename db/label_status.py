"""Dataset and label status for the Fine-tune page: how many images, how many reviewed, and how the
labels changed since the active model version was trained."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.labels import FINDINGS
from db.models import FINDING_COLUMNS, SOURCE_NLP, Adjudication, Image, LabelEvent, NlpLabel
from db.registry import get_active_version
from db.reviews import effective_labels


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
    status = LabelStatus()
    status.n_images = int(session.scalar(select(func.count()).select_from(Image)) or 0)
    if not status.n_images:
        return status
    for source, count in session.execute(select(Image.source, func.count()).group_by(Image.source)):
        if source == "upload":
            status.n_uploads = int(count)
        else:
            status.n_dataset += int(count)
    status.by_split = {
        str(split or "none"): int(count)
        for split, count in session.execute(select(Image.split, func.count()).group_by(Image.split))
    }
    status.n_adjudicated = int(session.scalar(select(func.count()).select_from(Adjudication)) or 0)

    active = get_active_version(session)
    since: set[int] = set()
    if active is not None:
        status.active_name, status.active_created_at = active.name, active.created_at
        events = session.execute(
            select(LabelEvent.image_id).where(LabelEvent.at > active.created_at)
        ).scalars()
        event_ids = list(events)
        status.n_label_events_since_active = len(event_ids)
        since = set(event_ids)

    nlp: dict[int, tuple[bool, ...]] = {}
    columns = [NlpLabel.image_id, *(getattr(NlpLabel, c) for c in FINDING_COLUMNS)]
    for image_id, *values in session.execute(select(*columns).where(NlpLabel.source == SOURCE_NLP)):
        nlp[image_id] = tuple(bool(v) for v in values)
    status.n_with_nlp = len(nlp)

    labels = effective_labels(session)
    nlp_positive = [0] * len(FINDINGS)
    effective_positive = [0] * len(FINDINGS)
    changed = [0] * len(FINDINGS)
    changed_since = [0] * len(FINDINGS)
    changed_images_since: set[int] = set()
    for image_id, label in labels.items():
        if label.n_reviews:
            status.n_reviewed += 1
        if label.exclude:
            status.n_excluded += 1
        original = nlp.get(image_id)
        if original is not None:
            for c, value in enumerate(original):
                nlp_positive[c] += value
        if not label.exclude:
            for c, finding in enumerate(FINDINGS):
                effective_positive[c] += label.findings[finding]
        if label.source not in ("consensus", "adjudication") or original is None:
            continue
        differs = [label.findings[f] != original[c] for c, f in enumerate(FINDINGS)]
        if any(differs):
            status.n_changed += 1
        for c, flag in enumerate(differs):
            if flag:
                changed[c] += 1
                if image_id in since:
                    changed_since[c] += 1
                    changed_images_since.add(image_id)
    status.n_images_changed_since_active = len(changed_images_since)
    status.findings = [
        FindingStatus(f, nlp_positive[c], effective_positive[c], changed[c], changed_since[c])
        for c, f in enumerate(FINDINGS)
    ]
    return status
