"""The reading study in the database: disputes (read_status), the Disputed queue, adjudication and the
image's history, assignments with double reads, study settings, finding images, the 0004 migration."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, func, select, text

from core.labels import FINDINGS
from db import adjudication, assignments, review_lookup, study
from db.engine import session_scope
from db.errors import NotAllowedError
from db.migrate import downgrade, upgrade
from db.models import EXCLUDE_BIT, Assignment, Image, ReadStatus, Review, mask_of
from db.reviews import adjudicate, save_review
from db.study import StudyError


def _label(*positive: str) -> dict[str, bool]:
    return {f: f in positive for f in FINDINGS}


def _read(session, image_id, reader, *positive, uncertain=(), exclude=False):
    no_finding = not positive and not uncertain and not exclude
    return save_review(
        session, image_id, reader, _label(*positive), no_finding, exclude, "", None, uncertain=uncertain,
        blinded=True,
    )  # fmt: skip


def test_dispute_rule() -> None:
    present = {f: "absent" for f in FINDINGS} | {"Mass": "present"}
    absent = {f: "absent" for f in FINDINGS}
    unsure = absent | {"Mass": "uncertain"}
    assert adjudication.dispute_mask([(present, False)]) == 0  # one read: nothing to compare
    assert adjudication.dispute_mask([(present, False), (absent, False)]) == mask_of(["Mass"])  # a 1-1 tie
    assert adjudication.dispute_mask([(present, False), (unsure, False)]) == mask_of(["Mass"])
    assert adjudication.dispute_mask([(present, False), (present, False), (absent, False)]) == mask_of(
        ["Mass"]
    )
    # An excluding reader disputes the exclusion, not the findings of the others.
    assert adjudication.dispute_mask([(present, False), (absent, True)]) == EXCLUDE_BIT
    assert adjudication.dispute_mask([(absent, True), (present, True)]) == 0
    assert adjudication.disputed_names(mask_of(["Nodule", "Mass"]) | EXCLUDE_BIT) == (
        "Mass",
        "Nodule",
        "exclude",
    )


def test_disputed_queue_adjudication_and_history(engine: Engine, make_user, make_images) -> None:
    alice, bob, admin = make_user("alice"), make_user("bob"), make_user("boss", role="admin")
    tie, agreed, single = make_images(3, nlp={0: ["Cardiomegaly"]})
    with session_scope(engine) as session:
        _read(session, tie, alice, "Cardiomegaly")
        _read(session, tie, bob)
        _read(session, agreed, alice, "Effusion")
        _read(session, agreed, bob, "Effusion")
        _read(session, single, alice, "Mass")
    with session_scope(engine, read_only=True) as session:
        queue = adjudication.disputed_queue(session)
        assert [(item.image_id, item.disputed, item.n_reads) for item in queue] == [
            (tie, ("Cardiomegaly",), 2)
        ]
        assert adjudication.disputed_count(session) == 1
        label = adjudication.labelled(session, tie)
        assert label.disputed == ("Cardiomegaly",) and label.source == "consensus"
        assert adjudication.labelled(session, agreed).disputed == ()
        answers = adjudication.reader_answers(session, tie)
        assert [(a.username, a.states["Cardiomegaly"], a.blinded) for a in answers] == [
            ("alice", "present", True), ("bob", "absent", True),
        ]  # fmt: skip
    with session_scope(engine) as session:
        adjudicate(
            session, tie, admin, _label("Cardiomegaly"), False, False, "", None, reason="CTR above 0.5"
        )
    with session_scope(engine, read_only=True) as session:
        assert adjudication.disputed_queue(session) == [] and adjudication.disputed_count(session) == 0
        status = session.get(ReadStatus, tie)
        assert (
            status.adjudicated
            and not status.open_dispute
            and status.disputed_mask == mask_of(["Cardiomegaly"])
        )
        history = adjudication.image_history(session, tie)
        assert [(h.username, h.kind) for h in history] == [
            ("alice", "review"), ("bob", "review"), ("boss", "adjudication"),
        ]  # fmt: skip
        assert history[0].change == "created: Cardiomegaly present"
        assert history[1].change == "created: No Finding"
        assert history[2].reason == "CTR above 0.5"
    with session_scope(engine) as session:  # alice changes her mind: the change reads before → after
        save_review(session, tie, alice, _label(), True, False, "", 1, blinded=True)
    with session_scope(engine, read_only=True) as session:
        change = adjudication.image_history(session, tie)[-1].change
        assert "Cardiomegaly: present → absent" in change and "No Finding: no → yes" in change


def test_disputed_queue_is_one_indexed_query_with_limit(engine: Engine, make_user, make_images) -> None:
    alice, bob = make_user("alice"), make_user("bob")
    ids = make_images(30)
    with session_scope(engine) as session:
        for position, image_id in enumerate(ids):
            _read(session, image_id, alice, "Mass")
            _read(session, image_id, bob, *(("Mass",) if position % 3 else ()))
    with session_scope(engine, read_only=True) as session:
        first = adjudication.disputed_queue(session, limit=4)
        rest = adjudication.disputed_queue(session, limit=100, after_image_id=first[-1].image_id)
        assert len(first) == 4 and len(first) + len(rest) == 10 == adjudication.disputed_count(session)
        if engine.dialect.name == "sqlite":
            plan = " ".join(
                str(row[-1])
                for row in session.execute(
                    text(
                        "EXPLAIN QUERY PLAN SELECT image_id FROM read_status WHERE open_dispute = 1 "
                        "ORDER BY image_id LIMIT 50"
                    )
                )
            )
            assert "ix_read_status_open_dispute_image_id" in plan


def test_assignments_double_reads_go_to_another_reader(engine: Engine, make_user, make_images) -> None:
    alice, bob, carol = make_user("alice"), make_user("bob"), make_user("carol")
    admin = make_user("boss", role="admin")
    ids = make_images(20)
    with session_scope(engine) as session:
        with pytest.raises(NotAllowedError):
            assignments.create_assignments(session, alice, [alice.id], 5, 0)
        with pytest.raises(StudyError, match="second reader"):
            assignments.create_assignments(session, admin, [alice.id], 5, 50)
        batch = assignments.create_assignments(session, admin, [alice.id, bob.id, carol.id], 10, 20, seed=3)
    assert (batch.n_images, batch.n_double) == (10, 2) and sum(batch.reads_per_reader.values()) == 12
    with session_scope(engine, read_only=True) as session:
        rows = session.execute(select(Assignment.image_id, Assignment.user_id, Assignment.read_number)).all()
        by_image: dict[int, list] = {}
        for image_id, user_id, number in rows:
            by_image.setdefault(image_id, []).append((number, user_id))
        doubles = [reads for reads in by_image.values() if len(reads) == 2]
        assert len(by_image) == 10 and len(doubles) == 2
        assert all(len({user for _, user in reads}) == 2 for reads in doubles)  # never the same reader twice
        mine = assignments.my_assignments(session, alice.id)
        done, total = assignments.progress(session, alice.id)
        assert (done, total) == (0, len(mine)) and total == batch.reads_per_reader["alice"]
    with session_scope(engine) as session:
        _read(session, mine[0].image_id, alice, "Mass")  # a save marks the assignment done
    with session_scope(engine, read_only=True) as session:
        assert assignments.progress(session, alice.id) == (1, total)
        assert mine[0].image_id not in [i.image_id for i in assignments.my_assignments(session, alice.id)]
        loads = {w.username: (w.assigned, w.done) for w in assignments.workload(session)}
        assert loads["alice"] == (total, 1)
    with session_scope(engine) as session:  # the next batch takes only images nobody has been given
        again = assignments.create_assignments(session, admin, [bob.id], 100, 0)
    assert again.n_images == len(ids) - 10


def test_study_settings_are_stored_and_admin_only(engine: Engine, make_user) -> None:
    reader, admin = make_user("reader"), make_user("boss", role="admin")
    with session_scope(engine) as session:
        assert study.study_settings(session) == study.StudySettings(blinding=True, study_mode="ai_first")
        with pytest.raises(NotAllowedError):
            study.update_study_settings(session, reader, blinding=False)
        with pytest.raises(StudyError, match="Unknown study mode"):
            study.update_study_settings(session, admin, study_mode="ai_sometimes")
        study.update_study_settings(session, admin, blinding=False, study_mode="ai_hidden")
    with session_scope(engine, read_only=True) as session:
        settings = study.study_settings(session)
        assert not settings.blinding and settings.study_mode == "ai_hidden" and not settings.ai_shown


def test_images_are_found_by_number_name_and_file_name(engine: Engine, make_images) -> None:
    [dataset_image] = make_images(1)
    with session_scope(engine) as session:
        upload = Image(source="upload", original_filename="Chest PA.png", sha256="ab" * 32, path="/x.png")
        session.add(upload)
        session.flush()
        upload_id, name = upload.id, session.get(Image, dataset_image).image_index
    with session_scope(engine, read_only=True) as session:
        for text_given in (
            str(upload_id),
            f"#{upload_id}",
            f"image #{upload_id}",
            "Chest PA.png",
            "chest pa.png",
        ):
            assert review_lookup.find_image_id(session, text_given) == upload_id, text_given
        assert review_lookup.find_image_id(session, name) == dataset_image
        assert review_lookup.find_image_id(session, name.removesuffix(".png")) == dataset_image
        assert review_lookup.find_image_id(session, "#99999") is None
        assert review_lookup.find_image_id(session, "nothing.png") is None


def test_migration_fills_read_status_from_existing_reviews(engine: Engine, make_user, make_images) -> None:
    alice, bob = make_user("alice"), make_user("bob")
    tie, agreed = make_images(2)
    with session_scope(engine) as session:
        _read(session, tie, alice, "Mass")
        _read(session, tie, bob)
        _read(session, agreed, alice, "Effusion")
        _read(session, agreed, bob, "Effusion", exclude=True)
    downgrade(engine, "0003_scale")
    upgrade(engine)
    with session_scope(engine, read_only=True) as session:
        rows = {row.image_id: row for row in session.scalars(select(ReadStatus))}
        assert rows[tie].disputed_mask == mask_of(["Mass"]) and rows[tie].open_dispute
        assert rows[agreed].disputed_mask == EXCLUDE_BIT and rows[agreed].n_reads == 2
        assert session.scalar(select(func.count()).select_from(Review).where(Review.blinded)) == 0
