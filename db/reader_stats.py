"""Reader statistics of the review study, from blinded reads only (db.study: anchored reads would
inflate agreement). Each finding has three answers: absent (0), present (1), uncertain (2).

- Inter-reader agreement per finding: Fleiss' kappa over the images with two or more blinded reads
  that keep the image (the form for a varying number of readers per image), from a histogram of
  (readers, present answers, uncertain answers) aggregated in SQL.
- Per-reader agreement per finding: Cohen's kappa of the reader's answers against a reference: the
  admin's adjudication where there is one, else the majority answer of the image's *other* blinded
  readers (no reference where they tie). A 3 x 3 table per reader and finding, counted in SQL.
- Reading time per image per reader: median and mean of `read_seconds`.

Every kappa comes with n (images or reads) and a 95 % bootstrap interval (resampling the images, i.e.
the cells of its table, `N_BOOT` times with a fixed seed). A figure resting on fewer than
`MIN_POSITIVES` positive answers is flagged `too_few`: kappa from a handful of positives means little.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy import Integer, and_, case, cast, false, func, literal, select, true, union_all
from sqlalchemy.orm import Session, aliased

from core.labels import FINDINGS
from db.models import FINDING_COLUMNS, Adjudication, Review, User

MIN_POSITIVES = 10
N_BOOT = 1000
ABSENT, PRESENT, UNCERTAIN = 0, 1, 2


@dataclass(frozen=True)
class Kappa:
    value: float | None
    low: float | None  # 95 % bootstrap interval
    high: float | None
    n: int  # images (inter-reader) or reads (per reader)
    positives: int  # present answers (inter-reader) or present references (per reader)
    agreement: float | None  # share of the n with the same answer

    @property
    def too_few(self) -> bool:
        return self.positives < MIN_POSITIVES


@dataclass(frozen=True)
class ReaderAgreement:
    username: str
    finding: str
    kappa: Kappa


@dataclass(frozen=True)
class ReadingTime:
    username: str
    n: int
    median_s: float | None
    mean_s: float | None


def _state(column: object, mask: object, index: int) -> object:
    """0 absent / 1 present / 2 uncertain of a finding column with its uncertain mask, in SQL."""
    return case(((mask.op("&")(1 << index)) != 0, UNCERTAIN), (column == true(), PRESENT), else_=ABSENT)


# ----------------------------------------------------------------------------------------------------
# Kappa arithmetic


def cohen_from_table(table: np.ndarray) -> float | None:
    """Cohen's kappa of a k x k table of counts (rows: reader, columns: reference); None if undefined."""
    total = table.sum()
    if total == 0:
        return None
    observed = np.trace(table) / total
    expected = float((table.sum(axis=1) * table.sum(axis=0)).sum() / total**2)
    if np.isclose(expected, 1.0):
        return None
    return float((observed - expected) / (1 - expected))


def _cohen_many(tables: np.ndarray) -> np.ndarray:
    """Cohen's kappa of B tables [B, k, k] (NaN where undefined)."""
    totals = tables.sum(axis=(1, 2))
    observed = np.trace(tables, axis1=1, axis2=2) / totals
    expected = (tables.sum(axis=2) * tables.sum(axis=1)).sum(axis=1) / totals**2
    with np.errstate(invalid="ignore", divide="ignore"):
        values = (observed - expected) / (1 - expected)
    return np.where(np.isclose(expected, 1.0), np.nan, values)


def fleiss_from_histogram(cells: np.ndarray, counts: np.ndarray) -> float | None:
    """Fleiss' kappa from histogram cells [K, 3] (answers per category of one image) with their image
    counts [K]; None when undefined (every answer in one category)."""
    value = _fleiss_many(cells, counts[None, :].astype(float))[0]
    return None if np.isnan(value) else float(value)


def _fleiss_many(cells: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Fleiss' kappa for B weightings [B, K] of histogram cells [K, 3] (NaN where undefined)."""
    raters = cells.sum(axis=1).astype(float)
    per_image = (cells * (cells - 1)).sum(axis=1) / (raters * (raters - 1))
    images = weights.sum(axis=1)
    observed = weights @ per_image / images
    shares = weights @ cells / (weights @ raters)[:, None]
    expected = (shares**2).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = (observed - expected) / (1 - expected)
    return np.where(np.isclose(expected, 1.0), np.nan, values)


def _interval(samples: np.ndarray) -> tuple[float | None, float | None]:
    finite = samples[np.isfinite(samples)]
    if len(finite) < N_BOOT // 2:  # most resamples undefined: no interval worth showing
        return None, None
    low, high = np.percentile(finite, [2.5, 97.5])
    return float(low), float(high)


def _resample(counts: np.ndarray, seed: int) -> np.ndarray:
    """N_BOOT multinomial resamples [B, K] of the cell counts (the images behind the cells)."""
    total = int(counts.sum())
    return np.random.default_rng(seed).multinomial(total, counts / total, size=N_BOOT).astype(float)


def cohen_kappa(table: np.ndarray, seed: int = 0) -> Kappa:
    """Kappa of a 3 x 3 table (reader x reference) with its bootstrap interval."""
    table = np.asarray(table, dtype=float)
    n = int(table.sum())
    positives = int(table[:, PRESENT].sum())
    if n == 0:
        return Kappa(None, None, None, 0, 0, None)
    value = cohen_from_table(table)
    flat = table.ravel()
    low, high = _interval(_cohen_many(_resample(flat, seed).reshape(N_BOOT, *table.shape)))
    return Kappa(value, low, high, n, positives, float(np.trace(table) / n))


def fleiss_kappa(cells: np.ndarray, counts: np.ndarray, seed: int = 0) -> Kappa:
    """Kappa of a histogram (cells [K, 3] of answers per category, counts [K] of images)."""
    cells, counts = np.asarray(cells, dtype=float).reshape(-1, 3), np.asarray(counts, dtype=float)
    n = int(counts.sum())
    if n == 0:
        return Kappa(None, None, None, 0, 0, None)
    positives = int((cells[:, PRESENT] * counts).sum())
    agree = float(counts[(cells > 0).sum(axis=1) == 1].sum() / n)
    value = fleiss_from_histogram(cells, counts)
    low, high = _interval(_fleiss_many(cells, _resample(counts, seed)))
    return Kappa(value, low, high, n, positives, agree)


# ----------------------------------------------------------------------------------------------------
# Queries


def _blinded_kept() -> list[object]:
    return [Review.blinded == true(), Review.exclude == false()]


def inter_reader_agreement(session: Session) -> dict[str, Kappa]:
    """finding -> Fleiss' kappa over the images with >= 2 blinded reads that keep the image."""
    columns = [func.count().label("n")]
    for index, column in enumerate(FINDING_COLUMNS):
        state = _state(getattr(Review, column), Review.uncertain_mask, index)
        columns.append(func.sum(case((state == PRESENT, 1), else_=0)).label(f"p{index}"))
        columns.append(func.sum(case((state == UNCERTAIN, 1), else_=0)).label(f"u{index}"))
    per_image = (
        select(*columns).where(*_blinded_kept()).group_by(Review.image_id).having(func.count() >= 2)
    ).cte("per_image")
    parts = [
        select(
            literal(i).label("f"),
            per_image.c.n,
            per_image.c[f"p{i}"].label("p"),
            per_image.c[f"u{i}"].label("u"),
        )
        for i in range(len(FINDINGS))
    ]
    cells = union_all(*parts).subquery("cells")
    histogram = session.execute(
        select(cells.c.f, cells.c.n, cells.c.p, cells.c.u, func.count()).group_by(
            cells.c.f, cells.c.n, cells.c.p, cells.c.u
        )
    ).all()
    result = {}
    for index, finding in enumerate(FINDINGS):
        rows = [(int(n), int(p), int(u), int(c)) for f, n, p, u, c in histogram if int(f) == index]
        answers = np.array([[n - p - u, p, u] for n, p, u, _ in rows], dtype=float).reshape(-1, 3)
        counts = np.array([c for *_, c in rows], dtype=float)
        result[finding] = fleiss_kappa(answers, counts, seed=index)
    return result


def reader_agreement(session: Session) -> list[ReaderAgreement]:
    """Per reader and finding: Cohen's kappa against the reference (module doc), blinded reads."""
    other = aliased(Review, name="other")
    columns = [
        Review.id.label("review_id"),
        Review.user_id.label("user_id"),
        func.count(other.id).label("n_other"),
    ]
    columns.append(func.max(case((Adjudication.id.is_not(None), 1), else_=0)).label("adjudicated"))
    for index, column in enumerate(FINDING_COLUMNS):
        columns.append(
            func.max(_state(getattr(Review, column), Review.uncertain_mask, index)).label(f"r{index}")
        )
        columns.append(
            func.max(_state(getattr(Adjudication, column), Adjudication.uncertain_mask, index)).label(
                f"a{index}"
            )
        )
        state = _state(getattr(other, column), other.uncertain_mask, index)
        for code, name in ((PRESENT, "p"), (UNCERTAIN, "u")):
            columns.append(func.sum(case((state == code, 1), else_=0)).label(f"{name}{index}"))
    others_kept = and_(
        other.image_id == Review.image_id, other.user_id != Review.user_id, other.blinded == true(),
        other.exclude == false(),
    )  # fmt: skip
    per_read = (
        select(*columns)
        .select_from(Review)
        .outerjoin(other, others_kept)
        .outerjoin(
            Adjudication, and_(Adjudication.image_id == Review.image_id, Adjudication.exclude == false())
        )
        .where(*_blinded_kept())
        .group_by(Review.id, Review.user_id)
    ).cte("per_read")
    parts = []
    for index in range(len(FINDINGS)):
        n, p, u = per_read.c.n_other, per_read.c[f"p{index}"], per_read.c[f"u{index}"]
        majority = case(
            (2 * p > n, PRESENT), (2 * u > n, UNCERTAIN), (2 * (n - p - u) > n, ABSENT), else_=None
        )
        reference = case(
            (per_read.c.adjudicated == 1, per_read.c[f"a{index}"]), (n > 0, majority), else_=None
        )
        reader = cast(per_read.c[f"r{index}"], Integer).label("r")
        parts.append(
            select(
                per_read.c.user_id, literal(index).label("f"), reader, cast(reference, Integer).label("ref")
            )
        )
    pairs = union_all(*parts).subquery("pairs")
    rows = session.execute(
        select(User.username, pairs.c.f, pairs.c.r, pairs.c.ref, func.count())
        .join(User, User.id == pairs.c.user_id)
        .where(pairs.c.ref.is_not(None))
        .group_by(User.username, pairs.c.f, pairs.c.r, pairs.c.ref)
    ).all()
    tables: dict[tuple[str, int], np.ndarray] = {}
    for username, f, r, ref, count in rows:
        tables.setdefault((username, int(f)), np.zeros((3, 3)))[int(r), int(ref)] += int(count)
    return [
        ReaderAgreement(username, FINDINGS[f], cohen_kappa(table, seed=f))
        for (username, f), table in sorted(tables.items())
    ]


def reading_times(session: Session) -> list[ReadingTime]:
    """Per reader with timed reads: n, median and mean seconds per image (two small queries each)."""
    summary = session.execute(
        select(User.id, User.username, func.count(Review.read_seconds), func.avg(Review.read_seconds))
        .join(User, User.id == Review.user_id)
        .where(Review.read_seconds.is_not(None))
        .group_by(User.id, User.username)
        .order_by(User.username)
    ).all()
    times = []
    for user_id, username, n, mean in summary:
        n = int(n)
        ordered = (
            select(Review.read_seconds)
            .where(Review.user_id == user_id, Review.read_seconds.is_not(None))
            .order_by(Review.read_seconds)
        )
        middle = list(session.scalars(ordered.offset((n - 1) // 2).limit(2 - n % 2)))
        median = float(np.mean(middle)) if middle else None
        times.append(ReadingTime(username, n, median, None if mean is None else float(mean)))
    return times
