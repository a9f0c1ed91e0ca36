"""Reviews, adjudications, consensus, optimistic locking and the audit trail."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, func, select

from core.labels import FINDINGS
from db.effective import get_effective_label
from db.engine import session_scope
from db.errors import InvalidLabelError, NotAllowedError, NotFoundError, StaleReviewError
from db.label_rules import consensus, validate_label
from db.models import Box, LabelEvent, Review, User
from db.registry import register_model_version, save_predictions
from db.reviews import (
    account_by_id,
    adjudicate,
    count_images,
    get_review,
    has_predictions,
    image_boxes,
    image_splits,
    label_history,
    save_review,
)


def _findings(*positive: str) -> dict[str, bool]:
    return {finding: finding in positive for finding in FINDINGS}


def _save(engine: Engine, image_id: int, user: User, *positive: str, exclude: bool = False,
          version: int | None = None, comment: str = "") -> Review:  # fmt: skip
    with session_scope(engine) as session:
        return save_review(
            session,
            image_id,
            user,
            _findings(*positive),
            not positive and not exclude,
            exclude,
            comment,
            version,
        )


def test_consensus_rules() -> None:
    a, b, c = _findings("Effusion", "Mass"), _findings("Effusion"), _findings("Nodule")
    findings, exclude = consensus([(a, False), (b, False), (c, False)])
    assert [f for f, v in findings.items() if v] == ["Effusion"]  # 2 of 3; Mass and Nodule 1 of 3
    assert not exclude
    findings, _ = consensus([(a, False), (c, False)])
    assert not any(findings.values())  # 1 of 2 is a tie: negative
    # Excluding readers do not vote on findings; exclusion needs a strict majority.
    findings, exclude = consensus([(a, False), (_findings(), True)])
    assert not exclude and findings["Effusion"] and findings["Mass"]
    _, exclude = consensus([(a, True), (b, True), (c, False)])
    assert exclude


def test_validation_sentences() -> None:
    with pytest.raises(InvalidLabelError, match="No Finding.*cannot be combined.*Effusion"):
        validate_label(_findings("Effusion"), no_finding=True, exclude=False)
    with pytest.raises(InvalidLabelError, match="Tick at least one"):
        validate_label(_findings(), no_finding=False, exclude=False)
    with pytest.raises(InvalidLabelError, match="Unknown finding"):
        validate_label({"Covid": True}, no_finding=False, exclude=False)
    assert validate_label({}, no_finding=False, exclude=True) == _findings()


def test_effective_label_precedence(engine: Engine, make_user, make_images) -> None:
    r1, r2, r3 = make_user("r1"), make_user("r2"), make_user("r3")
    admin = make_user("boss", role="admin")
    [image] = make_images(1, nlp={0: ["Atelectasis"]})

    with session_scope(engine) as session:
        label = get_effective_label(session, image)
    assert (label.source, label.positives, label.no_finding, label.n_reviews) == (
        "nlp",
        ["Atelectasis"],
        False,
        0,
    )

    _save(engine, image, r1, "Effusion")
    with session_scope(engine) as session:
        label = get_effective_label(session, image)
    assert (label.source, label.positives, label.n_reviews) == ("consensus", ["Effusion"], 1)

    _save(engine, image, r2)  # No Finding: now a 1-1 tie on Effusion -> negative
    with session_scope(engine) as session:
        label = get_effective_label(session, image)
    assert (label.source, label.positives, label.no_finding, label.finding_labels) == (
        "consensus", [], True, "No Finding"
    )  # fmt: skip

    _save(engine, image, r3, "Effusion", "Edema")  # Effusion 2 of 3
    with session_scope(engine) as session:
        assert get_effective_label(session, image).positives == ["Effusion"]
        adjudicate(session, image, admin, _findings("Pneumothorax"), False, False, "final", None)
    with session_scope(engine) as session:
        label = get_effective_label(session, image)
    assert (label.source, label.positives, label.n_reviews) == ("adjudication", ["Pneumothorax"], 3)


def test_images_without_any_label_have_source_none(engine: Engine, make_images) -> None:
    [image] = make_images(1, with_nlp=False)
    with session_scope(engine) as session:
        label = get_effective_label(session, image)
    assert label.source == "none" and not label.positives and not label.no_finding


def test_only_admins_adjudicate(engine: Engine, make_user, make_images) -> None:
    clinician = make_user("clin")
    [image] = make_images(1)
    with session_scope(engine) as session:
        with pytest.raises(NotAllowedError, match="admin"):
            adjudicate(session, image, clinician, _findings("Mass"), False, False, "", None)


def test_stale_save_is_refused_and_the_stored_review_kept(engine: Engine, make_user, make_images) -> None:
    user = make_user("tab-user")
    [image] = make_images(1)
    first = _save(engine, image, user, "Mass", comment="first")
    assert first.version == 1
    # Two browser tabs opened version 1; tab A saves, then tab B saves on top of version 1.
    second = _save(engine, image, user, "Nodule", version=1, comment="tab A")
    assert second.version == 2
    with pytest.raises(StaleReviewError) as refused:
        _save(engine, image, user, "Hernia", version=1, comment="tab B")
    message = str(refused.value)
    assert message.startswith("Someone changed this review since you opened it")
    assert "Your input is kept; reload to see their version." in message
    assert "version 1" in message and "version 2" in message
    assert (refused.value.expected_version, refused.value.stored_version) == (1, 2)

    with pytest.raises(StaleReviewError):  # "I had no review" while one exists
        _save(engine, image, user, "Hernia", version=None)
    with session_scope(engine) as session:
        stored = get_review(session, image, user)
        assert stored is not None
        assert (stored.version, stored.comment, stored.nodule, stored.hernia) == (2, "tab A", True, False)
        assert len(label_history(session, image)) == 2


def test_stale_adjudication_is_refused(engine: Engine, make_user, make_images) -> None:
    a, b = make_user("admin-a", role="admin"), make_user("admin-b", role="admin")
    [image] = make_images(1)
    with session_scope(engine) as session:
        adjudicate(session, image, a, _findings("Mass"), False, False, "", None)
    with session_scope(engine) as session:
        adjudicate(session, image, b, _findings("Nodule"), False, False, "", 1)
    with session_scope(engine) as session:
        with pytest.raises(StaleReviewError, match="adjudication"):
            adjudicate(session, image, a, _findings("Edema"), False, False, "", 1)
    with session_scope(engine) as session:
        assert get_effective_label(session, image).positives == ["Nodule"]


def test_every_change_has_exactly_one_event_with_before_and_after(
    engine: Engine, make_user, make_images
) -> None:
    user, admin = make_user("auditee"), make_user("chief", role="admin")
    [image] = make_images(1)
    saved = [
        _save(engine, image, user, "Mass", comment="one"),
        _save(engine, image, user, "Mass", "Nodule", version=1, comment="two"),
        _save(engine, image, user, exclude=True, version=2, comment="bad image"),
    ]
    unchanged = _save(engine, image, user, exclude=True, version=3, comment="bad image")
    assert unchanged.version == 3  # identical values: no new version, no event
    with session_scope(engine) as session:
        adjudicate(
            session, image, admin, _findings("Mass"), False, False, "settled", None, reason="tie-break"
        )

    with session_scope(engine) as session:
        events = label_history(session, image)
        assert [e.kind for e in events] == ["review"] * 3 + ["adjudication"]
        assert [e.version for e in events] == [1, 2, 3, 1]
        assert events[0].before is None
        assert events[0].after["findings"]["Mass"] is True and events[0].after["comment"] == "one"
        for previous, event in zip(events[:2], events[1:3], strict=True):
            assert event.before == previous.after
        assert events[1].after["findings"]["Nodule"] is True
        assert events[2].after["exclude"] is True and events[2].after["findings"]["Mass"] is False
        assert events[3].comment == "tie-break" and events[3].before is None and events[3].user_id == admin.id
        final = session.scalars(select(Review).where(Review.image_id == image)).one()
        assert events[2].after["version"] == final.version == saved[-1].version


def test_failed_save_writes_no_event(engine: Engine, make_user, make_images) -> None:
    user = make_user("careful")
    [image] = make_images(1)
    with pytest.raises(InvalidLabelError):
        with session_scope(engine) as session:
            save_review(session, image, user, _findings("Mass"), True, False, "", None)
    with session_scope(engine) as session:
        assert session.scalar(select(func.count()).select_from(LabelEvent)) == 0
        assert get_review(session, image, user) is None


def test_deactivated_users_cannot_save(engine: Engine, make_user, make_images) -> None:
    user = make_user("gone")
    user.active = False
    [image] = make_images(1)
    with pytest.raises(NotAllowedError, match="deactivated"):
        _save(engine, image, user, "Mass")


def test_what_the_review_page_reads(engine: Engine, make_user, make_images) -> None:
    user = make_user("reader")
    train = make_images(2)
    [test_image] = make_images(1, split="test")
    with session_scope(engine) as session:
        session.add(Box(image_id=test_image, finding="Mass", x=10.5, y=20, w=30, h=40))
        session.add(Box(image_id=test_image, finding="Nodule", x=1, y=2, w=3, h=4))
        version = register_model_version(session, "reader-model", "/nowhere")
        version_id = version.id
        assert not has_predictions(session, version_id)
        save_predictions(session, version_id, {train[0]: [0.5] * len(FINDINGS)})
    with session_scope(engine, read_only=True) as session:
        assert count_images(session) == 3
        assert image_splits(session) == ["test", "train_val"]
        assert image_boxes(session, test_image) == [("Mass", 10.5, 20.0, 30.0, 40.0), ("Nodule", 1, 2, 3, 4)]
        assert image_boxes(session, train[0]) == []
        assert has_predictions(session, version_id)
        assert account_by_id(session, user.id).username == "reader"
        with pytest.raises(NotFoundError, match="no longer exists"):
            account_by_id(session, user.id + 1000)


def test_uncertain_findings_reason_codes_and_read_details(engine: Engine, make_user, make_images) -> None:
    reader = make_user("reader")
    [image_id] = make_images(1)
    with pytest.raises(InvalidLabelError, match="either Present or Uncertain"):
        validate_label(_findings("Mass"), False, False, uncertain=["Mass"])
    with pytest.raises(InvalidLabelError, match="No Finding"):
        validate_label(_findings(), True, False, uncertain=["Nodule"])
    validate_label(_findings(), False, False, uncertain=["Nodule"])  # an Uncertain finding is an answer
    with session_scope(engine) as session:
        with pytest.raises(InvalidLabelError, match="Unknown reason code"):
            save_review(session, image_id, reader, _findings(), False, False, "", None,
                        uncertain=["Nodule"], reasons={"Nodule": ["because"]})  # fmt: skip
    with session_scope(engine) as session:
        review = save_review(
            session, image_id, reader, _findings("Effusion"), False, False, "", None, uncertain=["Nodule"],
            reasons={"Nodule": ["poor_quality"]}, blinded=True, study_mode="ai_hidden", read_seconds=4.5,
        )  # fmt: skip
        assert (review.blinded, review.study_mode, review.read_seconds) == (True, "ai_hidden", 4.5)
        event = session.scalars(select(LabelEvent).where(LabelEvent.image_id == image_id)).one()
        assert event.after["uncertain"] == ["Nodule"] and event.after["reasons"] == {
            "Nodule": ["poor_quality"]
        }
        # Saving the same answer again with another reading time is no change: no new version, no event.
        again = save_review(
            session, image_id, reader, _findings("Effusion"), False, False, "", 1, uncertain=["Nodule"],
            reasons={"Nodule": ["poor_quality"]}, blinded=True, study_mode="ai_hidden", read_seconds=9.0,
        )  # fmt: skip
        assert again.version == 1
        assert session.scalar(select(func.count()).select_from(LabelEvent)) == 1
        assert get_effective_label(session, image_id).findings["Effusion"]
