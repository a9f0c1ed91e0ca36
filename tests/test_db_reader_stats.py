"""Reader statistics: kappa from SQL-aggregated tables against textbook/sklearn values, blinded reads
only, intervals, "too few", reading times."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import cohen_kappa_score
from sqlalchemy import Engine

from core.labels import FINDINGS
from db import reader_stats
from db.engine import session_scope
from db.quality import fleiss_kappa as reference_fleiss
from db.reviews import adjudicate, save_review


def _label(*positive: str) -> dict[str, bool]:
    return {f: f in positive for f in FINDINGS}


def test_kappa_arithmetic_matches_the_references() -> None:
    # Fleiss (1971)-style table: 10 images x 3 categories, 5 readers each, as a histogram of its rows.
    rows = np.array([[5, 0, 0], [2, 3, 0], [0, 5, 0], [1, 1, 3], [0, 0, 5], [2, 3, 0], [4, 1, 0], [0, 2, 3],
                     [3, 2, 0], [5, 0, 0]])  # fmt: skip
    cells, counts = np.unique(rows, axis=0, return_counts=True)
    assert reader_stats.fleiss_from_histogram(cells, counts) == reference_fleiss(rows)
    reader = [0, 1, 1, 2, 0, 0, 1, 2, 2, 0, 1, 1]
    truth = [0, 1, 0, 2, 0, 1, 1, 2, 1, 0, 1, 0]
    table = np.zeros((3, 3))
    for r, t in zip(reader, truth, strict=True):
        table[r, t] += 1
    kappa = reader_stats.cohen_kappa(table)
    assert np.isclose(kappa.value, cohen_kappa_score(reader, truth))
    assert kappa.low <= kappa.value <= kappa.high and kappa.n == 12
    assert kappa.positives == truth.count(1) and kappa.too_few  # 5 reference positives < 10
    assert reader_stats.cohen_kappa(np.zeros((3, 3))).value is None


def test_agreement_uses_blinded_reads_and_the_reference(engine: Engine, make_user, make_images) -> None:
    alice, bob, carol = make_user("alice"), make_user("bob"), make_user("carol")
    admin = make_user("boss", role="admin")
    ids = make_images(24)
    rng = np.random.default_rng(4)
    alice_says = rng.random(24) < 0.5
    bob_says = np.where(rng.random(24) < 0.8, alice_says, ~alice_says)
    with session_scope(engine) as session:
        for image_id, a, b in zip(ids, alice_says, bob_says, strict=True):
            for reader, positive in ((alice, a), (bob, b)):
                answer = _label(*(["Effusion"] if positive else []))
                save_review(session, image_id, reader, answer, not positive, False, "", None, blinded=True,
                            read_seconds=float(image_id % 7))  # fmt: skip
            # An unblinded read (it saw the others) never counts, however it disagrees.
            save_review(session, image_id, carol, _label("Mass"), False, False, "", None, blinded=False)
        for image_id in ids[:12]:  # the first half adjudicated as alice read them
            positive = bool(alice_says[ids.index(image_id)])
            answer = _label(*(["Effusion"] if positive else []))
            adjudicate(session, image_id, admin, answer, not positive, False, "", None, reason="checked")
    with session_scope(engine, read_only=True) as session:
        inter = reader_stats.inter_reader_agreement(session)
        per_reader = {(r.username, r.finding): r.kappa for r in reader_stats.reader_agreement(session)}
        times = {t.username: t for t in reader_stats.reading_times(session)}

    counts = np.array(
        [[int(a) + int(b), 2 - int(a) - int(b)] for a, b in zip(alice_says, bob_says, strict=True)]
    )
    effusion = inter["Effusion"]
    assert effusion.n == 24 and np.isclose(effusion.value, reference_fleiss(counts))
    assert effusion.positives == int(alice_says.sum() + bob_says.sum()) and not effusion.too_few
    assert effusion.low < effusion.value < effusion.high
    assert inter["Mass"].positives == 0 and inter["Mass"].too_few  # carol's unblinded Mass reads left out

    # bob: the adjudication (= alice) on the first 12 images, alice's read (the other reader) on the rest.
    reference = alice_says
    bob_kappa = per_reader[("bob", "Effusion")]
    assert bob_kappa.n == 24 and np.isclose(bob_kappa.value, cohen_kappa_score(bob_says, reference))
    assert per_reader[("alice", "Effusion")].agreement == (12 + np.sum(alice_says[12:] == bob_says[12:])) / 24
    assert ("carol", "Mass") not in per_reader
    seconds = sorted(float(i % 7) for i in ids)
    assert times["alice"].n == 24 and times["alice"].median_s == np.median(seconds)
    assert "carol" not in times
