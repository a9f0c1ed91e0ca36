"""What the review page reads and writes, as plain values that can live in st.session_state.

Each function opens its own short transaction (webapp.database.session), so no ORM object outlives
a rerun. The page keeps a `ReviewTarget` snapshot of the image it shows; the version of the
reviewer's own review in that snapshot is what a save is checked against (optimistic locking). The
snapshot also holds the study settings the image was opened under (blinding, AI-first / AI-hidden):
what the reader was shown is what the saved review records.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

from core.labels import FINDINGS, NO_FINDING
from db import adjudication, assignments, registry, review_lookup, reviews, study
from db import cam_feedback as cam_feedback_db
from db.errors import NotFoundError
from db.label_rules import EffectiveLabel, QueueItem, finding_states
from db.models import SOURCE_GOOGLE, findings_of
from db.study import StudySettings
from webapp.database import session
from webapp.formatting import plain, pretty

ASSIGNMENTS = "assignments"
# The page's queue choices: label shown -> strategy (db.reviews' strategies, and the reader's assignments).
STRATEGIES: dict[str, str] = {
    "My assignments": ASSIGNMENTS,
    "Model disagrees most": "disagreement",
    "Unreviewed first": "unreviewed",
    "Random": "random",
    "By finding": "finding",
    "By split": "split",
}
ABSENT, PRESENT, UNCERTAIN = "absent", "present", "uncertain"
MAX_READ_SECONDS = 3600.0  # a tab left open over lunch is not a reading time


@dataclass(frozen=True)
class BoxInfo:
    finding: str
    x: float  # NIH BBox_List coordinates: original (1024 px) image space, top-left corner
    y: float
    w: float
    h: float


@dataclass(frozen=True)
class LabelValues:
    """A reader's answer: each finding's state, No Finding, exclude, comment, reason codes."""

    states: dict[str, str]  # finding -> ABSENT | PRESENT | UNCERTAIN, all 14
    no_finding: bool
    exclude: bool
    comment: str = ""
    reasons: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def empty(cls) -> LabelValues:
        return cls(dict.fromkeys(FINDINGS, ABSENT), False, False)

    @classmethod
    def of(cls, findings: dict[str, bool], uncertain: tuple[str, ...] = (), **rest: Any) -> LabelValues:
        states = {
            f: UNCERTAIN if f in uncertain else PRESENT if findings.get(f) else ABSENT for f in FINDINGS
        }
        return cls(states, **rest)

    @property
    def findings(self) -> dict[str, bool]:
        return {finding: state == PRESENT for finding, state in self.states.items()}

    @property
    def uncertain(self) -> tuple[str, ...]:
        return tuple(finding for finding, state in self.states.items() if state == UNCERTAIN)


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
    effective: EffectiveLabel  # shown only when blinding is off
    nlp: dict[str, bool] | None
    google: dict[str, Any] | None
    own: LabelValues | None  # the reviewer's earlier review, if any
    own_version: int | None  # its version when the page opened it: the save's expected_version
    settings: StudySettings = field(default_factory=StudySettings)  # as when the image was opened
    opened_at: float = 0.0  # time.monotonic() when opened: the read's duration
    ai_allowed: bool = True  # the study lets readers see the AI (the reader may still hide it)

    @property
    def blinded(self) -> bool:
        return self.settings.blinding

    @property
    def ai_shown(self) -> bool:
        return self.settings.ai_shown

    def prefill(self) -> LabelValues:
        """The reviewer's own review if there is one; else, blinded, the NLP label (AI-first) or nothing
        (AI-hidden); unblinded, the image's current label."""
        if self.own is not None:
            return self.own
        if self.blinded:
            if self.ai_shown and self.nlp is not None:
                return LabelValues.of(self.nlp, no_finding=not any(self.nlp.values()), exclude=False)
            return LabelValues.empty()
        label = self.effective
        return LabelValues.of(
            label.findings, label.uncertain, no_finding=label.no_finding, exclude=label.exclude
        )


@dataclass(frozen=True)
class QueueView:
    items: list[QueueItem]
    remaining: int
    strategy: str  # the strategy actually used (after a fallback)
    notice: str | None = None  # why the chosen strategy could not be used
    assigned: tuple[int, int] | None = None  # (done, assigned) for "My assignments"


def image_count() -> int:
    with session(read_only=True) as db_session:
        return reviews.count_images(db_session)


def splits() -> list[str]:
    with session(read_only=True) as db_session:
        return reviews.image_splits(db_session)


def study_settings() -> StudySettings:
    with session(read_only=True) as db_session:
        return study.study_settings(db_session)


def has_open_assignments(user_id: int) -> bool:
    with session(read_only=True) as db_session:
        done, total = assignments.progress(db_session, user_id)
        return done < total


def load_queue(
    user_id: int,
    strategy: str,
    *,
    finding: str | None = None,
    split: str | None = None,
    seed: int | None = None,
    limit: int = 50,
    skip: tuple[int, ...] = (),
) -> QueueView:
    """The reviewer's next images. "disagreement" falls back to "unreviewed" without stored predictions."""
    with session(read_only=True) as db_session:
        user = reviews.account_by_id(db_session, user_id)
        if strategy == ASSIGNMENTS:
            items = assignments.my_assignments(db_session, user.id, limit=limit, skip=skip)
            done, total = assignments.progress(db_session, user.id)
            return QueueView(items, total - done, strategy, None, (done, total))
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


def find_image_id(text: str) -> int | None:
    """An image by its number ("556", "#556"), NIH name or an upload's file name (db.review_lookup)."""
    with session(read_only=True) as db_session:
        return review_lookup.find_image_id(db_session, text)


def load_target(
    image_id: int, user_id: int, settings: StudySettings | None = None, *, hide_ai: bool = False
) -> ReviewTarget:
    """A snapshot of the image for the reader. `hide_ai`: the reader chose, for this session, to answer
    before seeing the NLP label and the model; the review then records "ai_hidden" as the mode it was
    made in, as in an AI-hidden study."""
    with session(read_only=True) as db_session:
        user = reviews.account_by_id(db_session, user_id)
        image = reviews.get_image(db_session, image_id)
        if image is None:
            raise NotFoundError(f"There is no image with id {image_id}.")
        boxes = reviews.image_boxes(db_session, image_id)
        nlp_row = reviews.get_source_labels(db_session, image_id)
        google_row = reviews.get_source_labels(db_session, image_id, SOURCE_GOOGLE)
        own = reviews.get_review(db_session, image_id, user)
        settings = settings or study.study_settings(db_session)
        ai_allowed = settings.ai_shown
        if hide_ai and settings.ai_shown:
            settings = replace(settings, study_mode="ai_hidden")
        return ReviewTarget(
            image_id=image.id,
            name=image.label,
            split=image.split,
            view=image.view,
            patient_id=image.patient_id,
            source=image.source,
            path=image.path,
            boxes=tuple(BoxInfo(*box) for box in boxes),
            effective=adjudication.labelled(db_session, image_id),
            nlp=None if nlp_row is None else {f: bool(v) for f, v in findings_of(nlp_row).items()},
            google=None if google_row is None else dict(google_row.extra or {}),
            own=None if own is None else values_of(own),
            own_version=None if own is None else own.version,
            settings=settings,
            opened_at=time.monotonic(),
            ai_allowed=ai_allowed,
        )


def image_path(image_id: int) -> str | None:
    """Where the image's file is (what reading ahead needs)."""
    with session(read_only=True) as db_session:
        image = reviews.get_image(db_session, image_id)
        return None if image is None else image.path


def values_of(row: Any) -> LabelValues:
    """The LabelValues of a Review or Adjudication row."""
    return LabelValues(
        finding_states(row), bool(row.no_finding), bool(row.exclude), row.comment or "",
        dict(row.reasons or {}),
    )  # fmt: skip


def save(user_id: int, target: ReviewTarget, values: LabelValues) -> tuple[int, EffectiveLabel]:
    """Save the reviewer's label of `target` (checked against the version they opened).

    Returns (the review's version now, the image's label after the save). Raises StaleReviewError,
    InvalidLabelError, NotAllowedError: each str() is a sentence for the page.
    """
    seconds = (
        min(max(time.monotonic() - target.opened_at, 0.0), MAX_READ_SECONDS) if target.opened_at else None
    )
    with session() as db_session:
        user = reviews.account_by_id(db_session, user_id)
        review = reviews.save_review(
            db_session, target.image_id, user, values.findings, values.no_finding, values.exclude,
            values.comment, target.own_version, uncertain=values.uncertain, reasons=values.reasons,
            blinded=target.blinded, study_mode=target.settings.study_mode, read_seconds=seconds,
        )  # fmt: skip
        version = review.version
        return version, adjudication.labelled(db_session, target.image_id)


def last_saved_image(user_id: int) -> int | None:
    """The image of the reader's most recently saved review (what "undo last save" reopens)."""
    with session(read_only=True) as db_session:
        return review_lookup.last_reviewed_image(db_session, user_id)


def label_text(findings: dict[str, bool]) -> str:
    positives = [pretty(finding) for finding in FINDINGS if findings.get(finding)]
    return ", ".join(positives) or NO_FINDING


def status_sentence(label: EffectiveLabel) -> str:
    """ "2 reviews, consensus: Effusion" and the like (only where blinding is off, or for admins)."""
    reviews_text = f"{label.n_reviews} review{'s' if label.n_reviews != 1 else ''}"
    excluded = " (excluded: not diagnostic quality)" if label.exclude else ""
    uncertain = f"; uncertain: {', '.join(map(pretty, label.uncertain))}" if label.uncertain else ""
    if label.source == "adjudication":
        return f"{reviews_text}; adjudicated by an admin: {label_text(label.findings)}{uncertain}{excluded}"
    if label.disputed:
        return f"{reviews_text}, disputed on {', '.join(map(pretty, label.disputed))}: awaiting adjudication"
    if label.source == "consensus":
        return f"{reviews_text}, consensus: {label_text(label.findings)}{uncertain}{excluded}"
    if label.source == "nlp":
        return f"Not reviewed yet; NLP label: {label_text(label.findings)}"
    return "Not reviewed yet; no label."


def cam_feedback(user_id: int, image_id: int, model_name: str) -> dict[str, bool]:
    """finding -> the reader's verdict so far on this image's heat maps of this model."""
    with session(read_only=True) as db_session:
        return cam_feedback_db.feedback_of(db_session, image_id, user_id, model_name)


def save_cam_feedback(user_id: int, image_id: int, model_name: str, finding: str, points_at: bool) -> None:
    with session() as db_session:
        user = reviews.account_by_id(db_session, user_id)
        cam_feedback_db.save_cam_feedback(db_session, image_id, user, model_name, finding, points_at)
