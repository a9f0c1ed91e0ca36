"""Label-quality statistics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import Engine

from core.labels import FINDINGS
from db.engine import session_scope
from db.models import SOURCE_GOOGLE, NlpLabel, User
from db.quality import cohen_kappa, fleiss_kappa, label_quality
from db.reviews import save_review


def _review(engine: Engine, image_id: int, user: User, *positive: str, blinded: bool = True) -> None:
    with session_scope(engine) as session:
        findings = {f: f in positive for f in FINDINGS}
        save_review(session, image_id, user, findings, not positive, False, "", None, blinded=blinded)


def test_fleiss_kappa_matches_the_textbook_example() -> None:
    # Fleiss (1971) as worked on Wikipedia: 10 subjects, 14 raters, 5 categories -> kappa 0.210.
    table = [
        [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
    ]  # fmt: skip
    assert fleiss_kappa(table) == pytest.approx(0.2099, abs=1e-4)
    assert fleiss_kappa([[3, 0], [0, 3]]) == pytest.approx(1.0)
    assert fleiss_kappa([[2, 0], [2, 0]]) is None  # one category only: undefined
    with pytest.raises(ValueError):
        fleiss_kappa([[1, 0]])


def test_cohen_kappa_by_hand() -> None:
    # po = 4/6, pe = 0.5 * 0.5 + 0.5 * 0.5 = 0.5 -> (2/3 - 1/2) / (1/2) = 1/3
    assert cohen_kappa([1, 1, 0, 0, 1, 0], [1, 0, 0, 0, 1, 1]) == pytest.approx(1 / 3)
    assert cohen_kappa([0, 0], [0, 0]) is None
    assert cohen_kappa([], []) is None


def test_cohen_kappa_equals_sklearns() -> None:
    from sklearn.metrics import cohen_kappa_score

    rng = np.random.default_rng(7)
    for size, categories in ((5, 2), (40, 2), (200, 3), (31, 4)):
        a = rng.integers(0, categories, size)
        b = np.where(rng.random(size) < 0.6, a, rng.integers(0, categories, size))
        assert cohen_kappa(a.tolist(), b.tolist()) == pytest.approx(cohen_kappa_score(a, b), abs=1e-12)
    assert cohen_kappa([1, 1, 1], [0, 0, 0]) == pytest.approx(cohen_kappa_score([1, 1, 1], [0, 0, 0]))


def test_two_readers_use_cohen(engine: Engine, make_user, make_images) -> None:
    r1, r2 = make_user("r1"), make_user("r2")
    images = make_images(6)
    for image_id, a, b in zip(images, [1, 1, 0, 0, 1, 0], [1, 0, 0, 0, 1, 1], strict=True):
        _review(engine, image_id, r1, *(["Effusion"] if a else []))
        _review(engine, image_id, r2, *(["Effusion"] if b else []))
    with session_scope(engine, read_only=True) as session:
        quality = label_quality(session)
    assert quality.n_multi_read_images == 6 and quality.n_reviewed_images == 6
    effusion = next(row for row in quality.findings if row.finding == "Effusion")
    assert effusion.kappa_method == "cohen"
    assert effusion.kappa == pytest.approx(1 / 3)
    assert effusion.percent_agreement == pytest.approx(4 / 6)
    mass = next(row for row in quality.findings if row.finding == "Mass")
    assert mass.kappa is None and mass.percent_agreement == 1.0  # nobody ever marked Mass


def test_kappa_counts_blinded_reads_only(engine: Engine, make_user, make_images) -> None:
    """A reader who saw the others' answers (unblinded) is not independent: their reads change neither
    kappa nor its n, even where they would make a third reader or a second read of an image."""
    r1, r2, peeker = make_user("r1"), make_user("r2"), make_user("peeker")
    images = make_images(8)
    first, second = [1, 1, 0, 0, 1, 0], [1, 0, 0, 0, 1, 1]  # Cohen's kappa 1/3 (see above)
    for image_id, a, b in zip(images[:6], first, second, strict=True):
        _review(engine, image_id, r1, *(["Effusion"] if a else []))
        _review(engine, image_id, r2, *(["Effusion"] if b else []))
        _review(engine, image_id, peeker, *(["Effusion"] if a else []), blinded=False)  # copies r1
    lone = images[6:]  # one blinded read each, plus an unblinded one: not a multi-read image
    for image_id in lone:
        _review(engine, image_id, r1, "Effusion")
        _review(engine, image_id, peeker, blinded=False)
    # Counted, the peeker would make a 3-reader Fleiss' kappa over all 8 images instead.
    all_reads = [[2 * a + b, 3 - 2 * a - b] for a, b in zip(first, second, strict=True)] + [[1, 1]] * 2
    assert fleiss_kappa(all_reads) != pytest.approx(1 / 3)
    with session_scope(engine, read_only=True) as session:
        quality = label_quality(session)
    assert (quality.n_multi_read_images, quality.n_blinded_reads) == (6, 12)
    effusion = next(row for row in quality.findings if row.finding == "Effusion")
    assert (effusion.n_multi_read, effusion.n_blinded_reads, effusion.kappa_method) == (6, 12, "cohen")
    assert effusion.kappa == pytest.approx(1 / 3)
    assert effusion.percent_agreement == pytest.approx(4 / 6)
    assert quality.n_reviewed_images == 8  # every review still counts towards the labels


def test_three_readers_use_fleiss(engine: Engine, make_user, make_images) -> None:
    readers = [make_user(f"r{i}") for i in range(3)]
    images = make_images(4)
    positives_per_image = [3, 2, 1, 1]
    for image_id, positives in zip(images, positives_per_image, strict=True):
        for k, reader in enumerate(readers):
            _review(engine, image_id, reader, *(["Edema"] if k < positives else []))
    # P_i = 1, 1/3, 1/3, 1/3 -> P = 0.5; p = 7/12, 5/12 -> Pe = 74/144; kappa = (0.5 - Pe) / (1 - Pe) = -1/35
    with session_scope(engine, read_only=True) as session:
        edema = next(row for row in label_quality(session).findings if row.finding == "Edema")
    assert edema.kappa_method == "fleiss"
    assert edema.kappa == pytest.approx(-1 / 35)
    assert edema.percent_agreement == pytest.approx(1 / 4)


def test_nlp_overturns(engine: Engine, make_user, make_images) -> None:
    reader = make_user("reader")
    kept, dropped, added, untouched = make_images(
        4, nlp={0: ["Effusion"], 1: ["Effusion", "Mass"], 3: ["Effusion"]}
    )
    _review(engine, kept, reader, "Effusion")
    _review(engine, dropped, reader, "Mass")  # Effusion: positive -> negative
    _review(engine, added, reader, "Effusion", "Nodule")  # Effusion, Nodule: negative -> positive
    with session_scope(engine, read_only=True) as session:
        rows = {row.finding: row for row in label_quality(session).findings}
    effusion = rows["Effusion"]
    assert (effusion.n_reviewed, effusion.nlp_positive, effusion.nlp_negative) == (3, 2, 1)
    assert (effusion.pos_to_neg, effusion.neg_to_pos) == (1, 1)
    assert effusion.pos_to_neg_rate == pytest.approx(0.5) and effusion.neg_to_pos_rate == pytest.approx(1.0)
    assert (rows["Mass"].pos_to_neg, rows["Mass"].neg_to_pos, rows["Mass"].pos_to_neg_rate) == (0, 0, 0.0)
    assert rows["Nodule"].neg_to_pos == 1 and rows["Nodule"].pos_to_neg_rate is None
    assert rows["Effusion"].n_multi_read == 0 and rows["Effusion"].kappa is None


def test_agreement_with_google_labels(engine: Engine, make_user, make_images) -> None:
    reader = make_user("reader")
    g1, g2, g3 = make_images(3, nlp={1: ["Nodule"]})
    google = {
        g1: {"Pneumothorax": True, "Nodule or mass": False, "Airspace opacity": False},
        g2: {"Pneumothorax": False, "Nodule or mass": True, "Airspace opacity": False},
        g3: {"Pneumothorax": False, "Nodule or mass": False, "Airspace opacity": False},
    }
    with session_scope(engine) as session:
        for image_id, values in google.items():
            session.add(
                NlpLabel(
                    image_id=image_id,
                    source=SOURCE_GOOGLE,
                    extra={**values, "Fracture": False, "set_id": "test"},
                )
            )
    _review(engine, g1, reader, "Pneumothorax")
    _review(engine, g2, reader, "Mass")
    _review(engine, g3, reader, "Infiltration")
    with session_scope(engine, read_only=True) as session:
        rows = {row.google_finding: row for row in label_quality(session).google}
    assert set(rows) == {"Pneumothorax", "Nodule or mass", "Airspace opacity"}
    ptx = rows["Pneumothorax"]
    assert (ptx.n_reviewed, ptx.reviewed_agreement, ptx.reviewed_kappa) == (3, 1.0, pytest.approx(1.0))
    assert ptx.nlp_agreement == pytest.approx(2 / 3) and ptx.nlp_kappa == pytest.approx(0.0)
    assert rows["Nodule or mass"].reviewed_agreement == 1.0 and rows["Nodule or mass"].nlp_agreement == 1.0
    opacity = rows["Airspace opacity"]
    assert opacity.chestxray14_findings == ("Consolidation", "Pneumonia", "Infiltration")
    assert opacity.reviewed_agreement == pytest.approx(2 / 3) and opacity.reviewed_kappa == pytest.approx(0.0)
    assert opacity.nlp_agreement == 1.0 and opacity.nlp_kappa is None
