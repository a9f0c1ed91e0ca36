"""What the review page reads and writes, as plain values that can live in st.session_state.

Each function opens its own short transaction (webapp.database.session), so no ORM object outlives
a rerun. The page keeps a `ReviewTarget` snapshot of the image it shows; the version of the
reviewer's own review in that snapshot is what a save is checked against (optimistic locking).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.labels import FINDINGS, NO_FINDING
from db import registry, reviews
from db.errors import NotFoundError
from db.models import SOURCE_GOOGLE, findings_of
from db.reviews import EffectiveLabel, QueueItem
from webapp.database import session
from webapp.formatting import plain, pretty

# The page's queue choices: label shown -> db.reviews strategy.
STRATEGIES: dict[str, str] = {
    "Model disagrees most": "disagreement",
    "Unreviewed first": "unreviewed",
    "Random": "random",
    "By finding": "finding",
    "By split": "split",
}


@dataclass(frozen=True)
class BoxInfo:
    finding: str
    x: float  # NIH BBox_List coordinates: original (1024 px) image space, top-left corner
    y: float
    w: float
    h: float


@dataclass(frozen=True)
class LabelValues:
    """What the form shows: 14 findings, No Finding, exclude, comment."""

    findings: dict[str, bool]
    no_finding: bool
    exclude: bool
    comment: str = ""


@dataclass(frozen=True)
class ReviewTarget:
    image_id: int
    name: str
    split: str | None
    view: str | None
    patient_id: int | None
    source: str
    path: str | None
    boxes: tuple[BoxInfo, ...]
    effective: EffectiveLabel
    nlp: dict[str, bool] | None
    google: dict[str, Any] | None
    own: LabelValues | None  # the reviewer's earlier review, if any
    own_version: int | None  # its version when the page opened it: the save's expected_version

    def prefill(self) -> LabelValues:
        """The reviewer's own review if there is one, else the image's current effective label."""
        if self.own is not None:
            return self.own
        label = self.effective
        return LabelValues(dict(label.findings), label.no_finding, label.exclude)


@dataclass(frozen=True)
class QueueView:
    items: list[QueueItem]
    remaining: int
    strategy: str  # the strategy actually used (after a fallback)
    notice: str | None = None  # why the chosen strategy could not be used


def image_count() -> int:
    with session(read_only=True) as db_session:
        return reviews.count_images(db_session)


def splits() -> list[str]:
    with session(read_only=True) as db_session:
        return reviews.image_splits(db_session)


def load_queue(
    user_id: int,
    strategy: str,
    *,
    finding: str | None = None,
    split: str | None = None,
    seed: int | None = None,
    limit: int = 50,
) -> QueueView:
    """The reviewer's next images. "disagreement" falls back to "unreviewed" without stored predictions."""
    with session(read_only=True) as db_session:
        user = reviews.account_by_id(db_session, user_id)
        notice = None
        if strategy == "disagreement":
            notice = _why_no_disagreement(db_session)
            if notice is not None:
                strategy = "unreviewed"
        options = {"finding": finding, "split": split}
        items = reviews.review_queue(db_session, user, strategy, **options, limit=limit, seed=seed)  # type: ignore[arg-type]
        remaining = reviews.remaining_count(db_session, user, strategy, **options)  # type: ignore[arg-type]
        return QueueView(items, remaining, strategy, notice)


def _why_no_disagreement(db_session: Any) -> str | None:
    active = registry.get_active_version(db_session)
    if active is None:
        return (
            "No model version is active yet, so there are no stored predictions to disagree with; "
            "showing unreviewed images first instead."
        )
    if not reviews.has_predictions(db_session, active.id):
        return (
            f"No predictions of the active model version “{plain(active.name)}” are stored yet; "
            "showing unreviewed images first instead."
        )
    return None


def find_image_id(name: str) -> int | None:
    """The id of a dataset image by its NIH name ("00000001_000.png"; the .png may be left out)."""
    name = name.strip()
    if not name:
        return None
    if not name.lower().endswith(".png"):
        name += ".png"
    with session(read_only=True) as db_session:
        image = reviews.find_image(db_session, name)
        return None if image is None else image.id


def load_target(image_id: int, user_id: int) -> ReviewTarget:
    with session(read_only=True) as db_session:
        user = reviews.account_by_id(db_session, user_id)
        image = reviews.get_image(db_session, image_id)
        if image is None:
            raise NotFoundError(f"There is no image with id {image_id}.")
        boxes = reviews.image_boxes(db_session, image_id)
        nlp_row = reviews.get_source_labels(db_session, image_id)
        google_row = reviews.get_source_labels(db_session, image_id, SOURCE_GOOGLE)
        own = reviews.get_review(db_session, image_id, user)
        return ReviewTarget(
            image_id=image.id,
            name=image.label,
            split=image.split,
            view=image.view,
            patient_id=image.patient_id,
            source=image.source,
            path=image.path,
            boxes=tuple(BoxInfo(*box) for box in boxes),
            effective=reviews.get_effective_label(db_session, image_id),
            nlp=None if nlp_row is None else {f: bool(v) for f, v in findings_of(nlp_row).items()},
            google=None if google_row is None else dict(google_row.extra or {}),
            own=None if own is None else _values_of(own),
            own_version=None if own is None else own.version,
        )


def _values_of(row: Any) -> LabelValues:
    findings = {finding: bool(value) for finding, value in findings_of(row).items()}
    return LabelValues(findings, bool(row.no_finding), bool(row.exclude), row.comment or "")


def save(user_id: int, target: ReviewTarget, values: LabelValues) -> tuple[int, EffectiveLabel]:
    """Save the reviewer's label of `target` (checked against the version they opened).

    Returns (the review's version now, the image's effective label after the save). Raises
    StaleReviewError, InvalidLabelError, NotAllowedError: each str() is a sentence for the page.
    """
    with session() as db_session:
        user = reviews.account_by_id(db_session, user_id)
        review = reviews.save_review(
            db_session,
            target.image_id,
            user,
            values.findings,
            values.no_finding,
            values.exclude,
            values.comment,
            target.own_version,
        )
        version = review.version
        return version, reviews.get_effective_label(db_session, target.image_id)


def label_text(findings: dict[str, bool]) -> str:
    positives = [pretty(finding) for finding in FINDINGS if findings.get(finding)]
    return ", ".join(positives) or NO_FINDING


def status_sentence(label: EffectiveLabel) -> str:
    """ "2 reviews, consensus: Effusion" and the like, for the image's header and the save message."""
    reviews_text = f"{label.n_reviews} review{'s' if label.n_reviews != 1 else ''}"
    excluded = " (excluded: not diagnostic quality)" if label.exclude else ""
    if label.source == "adjudication":
        return f"{reviews_text}; adjudicated by an admin: {label_text(label.findings)}{excluded}"
    if label.source == "consensus":
        return f"{reviews_text}, consensus: {label_text(label.findings)}{excluded}"
    if label.source == "nlp":
        return f"Not reviewed yet; NLP label: {label_text(label.findings)}"
    return "Not reviewed yet; no label."
