"""Concurrent writers lose nothing: 8 threads saving reviews (one intact audit chain), claiming jobs and
promoting models; a login flood does not hold up other writers."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

from sqlalchemy import Engine, select, update

from core.labels import FINDINGS
from db import accounts
from db.audit import verify_chain
from db.engine import session_scope
from db.errors import StaleReviewError
from db.jobs import claim_next_job, enqueue_job
from db.models import LabelEvent, ModelVersion, Review, TrainingJob
from db.registry import promote, register_model_version
from db.reviews import get_review, save_review

THREADS = 8
ROUNDS = 12


def _run_threads(target: Callable[[int], None]) -> list[BaseException]:
    errors: list[BaseException] = []
    barrier = threading.Barrier(THREADS)

    def run(index: int) -> None:
        try:
            barrier.wait()
            target(index)
        except BaseException as exc:  # collected and asserted on by the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    return errors


def test_concurrent_review_saves_lose_nothing(engine: Engine, make_user, make_images) -> None:
    readers = [make_user(f"reader{i}") for i in range(THREADS)]
    shared = make_user("two-tabs")  # one account used from all threads at once: real conflicts
    images = make_images(THREADS + 2)
    own, common, contested = images[:THREADS], images[THREADS], images[THREADS + 1]
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()

    def work(i: int) -> None:
        versions: dict[int, int | None] = {own[i]: None, common: None}
        for k in range(ROUNDS):
            finding = {FINDINGS[(i + k) % len(FINDINGS)]: True}
            # Distinct reviews (own image; the common image under the reader's own account): never stale.
            for image_id in (own[i], common):
                with session_scope(engine) as session:
                    review = save_review(
                        session, image_id, readers[i], finding, False, False, f"{i}/{k}", versions[image_id]
                    )
                    versions[image_id] = review.version
            # The same review from every thread: open it, then save on top of what was opened.
            with session_scope(engine, read_only=True) as session:
                opened = get_review(session, contested, shared)
                expected = opened.version if opened else None
            try:
                with session_scope(engine) as session:
                    save_review(session, contested, shared, finding, False, False, f"{i}/{k}", expected)
                outcome = "saved"
            except StaleReviewError:
                outcome = "stale"
            with lock:
                outcomes[outcome] += 1

    errors = _run_threads(work)
    assert errors == []
    assert outcomes["saved"] + outcomes["stale"] == THREADS * ROUNDS
    assert outcomes["saved"] >= 1

    with session_scope(engine, read_only=True) as session:
        events = Counter(session.scalars(select(LabelEvent.image_id)))
        reviews = {(r.image_id, r.user_id): r for r in session.scalars(select(Review))}
        for i, image_id in enumerate(own):
            assert events[image_id] == ROUNDS
            assert reviews[(image_id, readers[i].id)].version == ROUNDS
        assert events[common] == THREADS * ROUNDS
        assert all(reviews[(common, reader.id)].version == ROUNDS for reader in readers)
        # Every successful save of the contested review is one event and one version step; stale ones none.
        assert events[contested] == outcomes["saved"] == reviews[(contested, shared.id)].version
        chain = session.scalars(
            select(LabelEvent).where(LabelEvent.image_id == contested).order_by(LabelEvent.version)
        ).all()
        assert [e.version for e in chain] == list(range(1, outcomes["saved"] + 1))
        assert chain[0].before is None
        for previous, event in zip(chain, chain[1:], strict=False):
            assert event.before == previous.after
        assert chain[-1].after["comment"] == reviews[(contested, shared.id)].comment
        # All those concurrent appends form one unbroken hash chain (no fork, no gap).
        report = verify_chain(session)
        assert report.ok and report.checked == sum(events.values())


def test_claim_next_job_never_hands_a_job_out_twice(engine: Engine) -> None:
    with session_scope(engine) as session:
        job_ids = [enqueue_job(session, {"n": n}).id for n in range(3 * THREADS)]
    claimed: list[tuple[int, str]] = []
    lock = threading.Lock()

    def work(i: int) -> None:
        while True:
            with session_scope(engine) as session:
                job = claim_next_job(session, f"worker-{i}")
                if job is None:
                    return
                assert job.status == "running" and job.worker_id == f"worker-{i}"
            with lock:
                claimed.append((job.id, f"worker-{i}"))

    assert _run_threads(work) == []
    ids = [job_id for job_id, _ in claimed]
    assert len(ids) == len(set(ids)) == len(job_ids)
    assert set(ids) == set(job_ids)


def test_concurrent_promotions_leave_exactly_one_active(engine: Engine) -> None:
    with session_scope(engine) as session:
        version_ids = [register_model_version(session, f"v{n}", f"/models/v{n}").id for n in range(4)]

    def work(i: int) -> None:
        for k in range(5):
            with session_scope(engine) as session:
                promote(session, version_ids[(i + k) % len(version_ids)])

    assert _run_threads(work) == []
    with session_scope(engine, read_only=True) as session:
        versions = session.scalars(select(ModelVersion)).all()
        assert sum(v.is_active for v in versions) == 1
        assert sum(v.status == "active" for v in versions) == 1


def test_a_login_flood_does_not_hold_up_other_writes(sqlite_engine: Engine) -> None:
    """Real argon2 (64 MiB, ~0.5 s a check) in 3 threads of wrong logins; small writes beside them stay
    fast. Verifying inside the write transaction, as logins once did, made each write wait seconds."""
    with session_scope(sqlite_engine) as session:
        job = enqueue_job(session, {"n": 0})
    stop = time.monotonic() + 3.0
    latencies: list[float] = []

    def flood(index: int) -> None:
        n = 0
        while time.monotonic() < stop:
            n += 1
            accounts.log_in(
                sqlite_engine, f"nobody{index}-{n}", "wrong password!", accounts.LoginClient(f"c{n}")
            )

    def write() -> None:
        while time.monotonic() < stop:
            started = time.perf_counter()
            with session_scope(sqlite_engine) as session:
                session.execute(update(TrainingJob).where(TrainingJob.id == job.id).values(worker_id="beat"))
            latencies.append(time.perf_counter() - started)
            time.sleep(0.05)

    threads = [threading.Thread(target=flood, args=(i,)) for i in range(3)] + [threading.Thread(target=write)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(latencies) >= 10
    assert max(latencies) < 2.0, f"a write waited {max(latencies):.1f} s during the login flood"
