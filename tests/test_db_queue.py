"""Review queue strategies."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from core.labels import FINDINGS
from db.engine import session_scope
from db.label_rules import QueueError
from db.models import User
from db.registry import promote, register_model_version, save_predictions
from db.reviews import remaining_count, review_queue, save_review


def _review(engine: Engine, image_id: int, user: User, *positive: str) -> None:
    with session_scope(engine) as session:
        findings = {f: f in positive for f in FINDINGS}
        save_review(session, image_id, user, findings, not positive, False, "", None)


def _queue(engine: Engine, user: User, strategy: str, **options) -> list[int]:
    with session_scope(engine, read_only=True) as session:
        return [item.image_id for item in review_queue(session, user, strategy, **options)]  # type: ignore[arg-type]


def _remaining(engine: Engine, user: User, strategy: str, **options) -> int:
    with session_scope(engine, read_only=True) as session:
        return remaining_count(session, user, strategy, **options)  # type: ignore[arg-type]


def test_unreviewed_puts_images_nobody_reviewed_first(engine: Engine, make_user, make_images) -> None:
    me, other, third = make_user("me"), make_user("other"), make_user("third")
    a, b, c, d, e = make_images(5)
    _review(engine, a, other)
    _review(engine, a, third)
    _review(engine, b, me)
    _review(engine, c, other)
    assert _queue(engine, me, "unreviewed") == [d, e, c, a]
    assert _queue(engine, me, "unreviewed", limit=2) == [d, e]
    assert _remaining(engine, me, "unreviewed") == 4
    with session_scope(engine, read_only=True) as session:
        items = review_queue(session, me, "unreviewed")
    assert [item.n_reviews for item in items] == [0, 0, 1, 2]
    assert items[0].image_index and items[0].split == "train_val"


def test_split_queue(engine: Engine, make_user, make_images) -> None:
    me = make_user("me")
    train = make_images(3, split="train_val")
    test = make_images(2, split="test")
    _review(engine, test[0], me)
    assert _queue(engine, me, "split", split="test") == [test[1]]
    assert set(_queue(engine, me, "split", split="train_val")) == set(train)
    assert _remaining(engine, me, "split", split="train_val") == 3
    with pytest.raises(QueueError, match="split"):
        _queue(engine, me, "split")


def test_random_queue_is_reproducible(engine: Engine, make_user, make_images) -> None:
    me = make_user("me")
    images = make_images(30)
    _review(engine, images[0], me)
    first = _queue(engine, me, "random", seed=7, limit=100)
    assert first == _queue(engine, me, "random", seed=7, limit=100)
    assert sorted(first) == sorted(images[1:])
    assert first != sorted(first)
    assert first != _queue(engine, me, "random", seed=8, limit=100)
    assert _remaining(engine, me, "random") == 29


def test_finding_queue_follows_the_effective_label(engine: Engine, make_user, make_images) -> None:
    me, other = make_user("me"), make_user("other")
    nlp_only, overturned, found_by_review, unrelated = make_images(
        4, nlp={0: ["Effusion"], 1: ["Effusion", "Mass"], 3: ["Mass"]}
    )
    _review(engine, overturned, other, "Mass")  # consensus: Effusion gone
    _review(engine, found_by_review, other, "Effusion")  # consensus: Effusion found
    assert _queue(engine, me, "finding", finding="Effusion") == [nlp_only, found_by_review]
    assert _remaining(engine, me, "finding", finding="Effusion") == 2
    assert _queue(engine, me, "finding", finding="Mass") == [unrelated, overturned]
    with pytest.raises(QueueError, match="finding"):
        _queue(engine, me, "finding", finding="Covid")


def test_disagreement_ranks_by_largest_gap_to_the_active_model(
    engine: Engine, make_user, make_images
) -> None:
    me = make_user("me")
    agree, mild, strong, no_prediction = make_images(4, nlp={0: ["Effusion"], 2: ["Mass"]})
    with session_scope(engine) as session:
        with pytest.raises(QueueError, match="No model version is active"):
            review_queue(session, me, "disagreement")
    with session_scope(engine) as session:
        old = register_model_version(session, "old", "/m/old")
        new = register_model_version(session, "new", "/m/new")
        base = [0.0] * len(FINDINGS)
        effusion = FINDINGS.index("Effusion")
        save_predictions(
            session,
            new.id,
            {
                agree: [0.9 if i == effusion else 0.05 for i in range(len(FINDINGS))],  # gap 0.1
                mild: [0.4 if i == effusion else 0.0 for i in range(len(FINDINGS))],  # gap 0.4 (Effusion)
                strong: [0.0] * len(FINDINGS),  # Mass in NLP, p = 0: gap 1.0
            },
        )
        save_predictions(session, old.id, {no_prediction: base})
        promote(session, new.id)
    with session_scope(engine, read_only=True) as session:
        items = review_queue(session, me, "disagreement")
        assert [i.image_id for i in items] == [strong, mild, agree]
        assert [i.top_finding for i in items] == ["Mass", "Effusion", "Effusion"]
        assert [i.score for i in items] == pytest.approx([1.0, 0.4, 0.1])
        assert remaining_count(session, me, "disagreement") == 3
        assert [i.image_id for i in review_queue(session, me, "disagreement", model_version_id=old.id)] == [
            no_prediction
        ]
    _review(engine, strong, me, "Mass")
    assert _queue(engine, me, "disagreement") == [mild, agree]


def test_unknown_strategy_is_refused(engine: Engine, make_user) -> None:
    me = make_user("me")
    with pytest.raises(QueueError, match="Unknown queue"):
        _queue(engine, me, "alphabetical")
