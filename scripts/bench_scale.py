"""Scale benchmark: every page of the app on a database of the full ChestX-ray14 size.

    .venv/bin/python scripts/bench_scale.py [--images N] [--reviews M] [--readers K] [--json]

Builds a throw-away database (SQLite, and PostgreSQL started with scripts/postgres.sh) holding every
Data_Entry row of the shared sample folder (replicated under new names above 112,120 images), a
synthetic prediction of the active model version for every image, M reviews by K readers with about a
sixth of them second reads, disputes and adjudications, and `--versions` model versions with full
evaluation reports. Then a separate "web process" per backend drives each page with Streamlit's
AppTest and reports, per page (and per review queue): the median seconds of opening it in a new
browser session, of a plain rerun, of save -> next (review) or of a rerun after another reader saved
(label quality, fine-tune), the SQL statements and SQL seconds of a rerun, and the first run of the
page in a brand-new process. `peak_rss_mb` is the peak resident memory of that web process.

Every image gets a viewable file (the sample's 555 PNGs, cycled), so the review page shows each
image and runs the model on it as it would in the app. Progress goes to stderr; `--json` prints
only the JSON document on stdout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

VIEWS = REPO_ROOT / "webapp" / "views"
POSTGRES_SCRIPT = REPO_ROOT / "scripts" / "postgres.sh"
NIH_IMAGES = 112_120
PASSWORD = "Scale-bench password 2026"
QUEUES = {  # page key -> (review page queue label, finding)
    "Review: disagreement": ("Model disagrees most", None),
    "Review: unreviewed": ("Unreviewed first", None),
    "Review: random": ("Random", None),
    "Review: by finding": ("By finding", "Effusion"),
}
OTHER_PAGES = {  # page key -> (view file, role of the visitor)
    "Label quality": ("quality.py", "clinician"),
    "Fine-tune": ("admin.py", "admin"),
    "Models & ROC": ("models.py", "admin"),
}


# ----------------------------------------------------------------------------------------------------
# Building the database


def dataset_folder(sample: Path, folder: Path, n_images: int) -> Path:
    """A ChestX-ray14 folder of `n_images` Data_Entry rows: the sample's rows, cut or replicated."""
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "images").symlink_to(sample / "images")
    for name in ("BBox_List_2017.csv", "google2019_nih-chest-xray-labels.csv"):
        if (sample / name).exists():
            (folder / name).symlink_to(sample / name)
    entries = pd.read_csv(sample / "Data_Entry_2017_v2020.csv")
    splits = {name: (sample / name).read_text().split() for name in ("train_val_list.txt", "test_list.txt")}
    copies = [entries]
    copy = 1
    while sum(len(c) for c in copies) < n_images:  # MIMIC-CXR-sized: the same rows under new names
        extra = entries.copy()
        extra["Image Index"] = extra["Image Index"].str.replace(".png", f"_r{copy}.png", regex=False)
        extra["Patient ID"] = extra["Patient ID"] + copy * 100_000
        copies.append(extra)
        for name, listed in splits.items():
            splits[name] = listed + [n.replace(".png", f"_r{copy}.png") for n in listed[: len(entries)]]
        copy += 1
    table = pd.concat(copies, ignore_index=True).iloc[:n_images]
    table.to_csv(folder / "Data_Entry_2017_v2020.csv", index=False)
    kept = set(table["Image Index"])
    for name, listed in splits.items():
        (folder / name).write_text("\n".join(n for n in listed if n in kept) + "\n")
    return folder


def build_database(
    url: str, data: Path, sample: Path, args: argparse.Namespace, step: Callable[[str], None]
) -> None:
    """Import, users, predictions, reviews, adjudications, versions: the state of a busy studio."""
    import numpy as np
    from argon2 import PasswordHasher
    from sqlalchemy import select, text, update

    from core.labels import FINDINGS
    from db import accounts
    from db.bulk import bulk_insert
    from db.engine import get_engine, session_scope
    from db.importer import import_chestxray14
    from db.models import (
        FINDING_COLUMNS,
        SOURCE_NLP,
        Adjudication,
        Image,
        LabelEvent,
        ModelVersion,
        NlpLabel,
        Review,
    )
    from db.registry import promote, register_model_version, save_predictions

    accounts._hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)  # logins are not measured
    rng = np.random.default_rng(args.seed)
    engine = get_engine(url)
    import_chestxray14(engine, data, require_images=False, hash_images=False)
    step("imported Data_Entry")

    files = sorted(str(p) for p in (sample / "images").glob("*.png"))
    with session_scope(engine) as session:
        # Every image gets a viewable file (the sample's PNGs, cycled): the review page shows them all.
        session.execute(text("CREATE TABLE bench_files (k INTEGER PRIMARY KEY, path TEXT)"))
        session.execute(text("INSERT INTO bench_files VALUES (:k, :path)"), [
            {"k": k, "path": path} for k, path in enumerate(files)
        ])  # fmt: skip
        session.execute(
            text(
                "UPDATE images SET path = (SELECT path FROM bench_files WHERE k = images.id % :n) "
                "WHERE path IS NULL"
            ),
            {"n": len(files)},
        )
        session.execute(text("DROP TABLE bench_files"))
        users = [
            accounts.create_user(session, f"reader{r + 1:02d}", PASSWORD, role="clinician")
            for r in range(args.readers)
        ]
        admin = accounts.create_user(session, "chief", PASSWORD, role="admin")
        reader_ids = [u.id for u in users]
        admin_id = admin.id
        rows = session.execute(
            select(NlpLabel.image_id, *(getattr(NlpLabel, c) for c in FINDING_COLUMNS))
            .where(NlpLabel.source == SOURCE_NLP)
            .order_by(NlpLabel.image_id)
        ).all()
    image_ids = np.array([row[0] for row in rows])
    nlp = np.array([row[1:] for row in rows], dtype=bool)
    step("users and image files")

    now = dt.datetime.now(dt.UTC)
    with session_scope(engine) as session:
        reference = evaluation_metrics(rng)
        versions = []
        for v in range(args.versions):
            name = "bench-active" if v == 0 else f"bench-v{v:02d}"
            version = register_model_version(
                session, name, str(REPO_ROOT / "models" / "chexnet-demo"), metrics=reference
            )
            versions.append(version.id)
        promote(session, versions[0])
        session.execute(
            update(ModelVersion)
            .where(ModelVersion.id == versions[0])
            .values(created_at=now - dt.timedelta(days=30))
        )
        logits = np.where(nlp, rng.normal(0.5, 1.5, nlp.shape), rng.normal(-3.0, 1.2, nlp.shape))
        probabilities = 1 / (1 + np.exp(-logits))
        save_predictions(
            session,
            versions[0],
            {int(i): [float(p) for p in row] for i, row in zip(image_ids, probabilities, strict=True)},
        )
    step("model versions and predictions")

    n_double = args.reviews // 6
    n_single = args.reviews - 2 * n_double
    n_reviewed = n_single + n_double
    # Half the reviewed images from the start of the id order (readers working "unreviewed first"),
    # half anywhere (the other queues).
    head = np.arange(min(n_reviewed // 2, len(image_ids)))
    rest = rng.choice(np.arange(len(head), len(image_ids)), size=n_reviewed - len(head), replace=False)
    positions = rng.permutation(np.concatenate([head, rest]))
    first_reader = rng.integers(0, len(reader_ids), size=n_reviewed)
    second_reader = (first_reader + rng.integers(1, len(reader_ids), size=n_reviewed)) % len(reader_ids)
    first = nlp[positions] ^ (rng.random((n_reviewed, len(FINDINGS))) < 0.04)
    second = first[:n_double] ^ (rng.random((n_double, len(FINDINGS))) < 0.05)  # disputes
    reads = [
        (positions, first_reader, first, rng.random(n_reviewed) < 0.01),
        (positions[:n_double], second_reader[:n_double], second, rng.random(n_double) < 0.01),
    ]
    review_rows, event_rows = [], []
    for image_pos, readers, findings, excluded in reads:
        for pos, reader, values, exclude in zip(image_pos, readers, findings, excluded, strict=True):
            values = [bool(v) and not exclude for v in values]
            no_finding = not any(values) and not exclude
            at = now - dt.timedelta(minutes=float(rng.uniform(0, 60 * 24 * 60)))
            image_id, user_id = int(image_ids[pos]), reader_ids[int(reader)]
            review_rows.append((image_id, user_id, *values, no_finding, bool(exclude), "", 1, at, at))
            state = {
                "findings": dict(zip(FINDINGS, values, strict=True)),
                "no_finding": no_finding, "exclude": bool(exclude), "comment": "", "version": 1,
            }  # fmt: skip
            event_rows.append((image_id, user_id, at, "review", 1, None, state, ""))
    disputed = np.flatnonzero((first[:n_double] != second).any(axis=1))
    adjudicated = disputed[rng.random(len(disputed)) < 0.3]
    adjudication_rows = []
    for index in adjudicated:
        image_id, values = int(image_ids[positions[index]]), [bool(v) for v in first[index]]
        at = now - dt.timedelta(minutes=float(rng.uniform(0, 60 * 24 * 30)))
        adjudication_rows.append((image_id, admin_id, *values, not any(values), False, "", 1, at, at))
        state = {
            "findings": dict(zip(FINDINGS, values, strict=True)),
            "no_finding": not any(values), "exclude": False, "comment": "", "version": 1,
        }  # fmt: skip
        event_rows.append((image_id, admin_id, at, "adjudication", 1, None, state, "tie-break"))
    event_rows.sort(key=lambda row: row[2])
    event_columns = ["image_id", "user_id", "at", "kind", "version", "before", "after", "comment"]
    if "hash" in LabelEvent.__table__.c:  # the audit trail is a hash chain (db.audit)
        from db.audit import GENESIS_HASH, event_digest

        previous, chained = GENESIS_HASH, []
        for row in event_rows:
            digest = event_digest(previous, dict(zip(event_columns, row, strict=True)))
            chained.append((*row, previous, digest))
            previous = digest
        event_rows, event_columns = chained, [*event_columns, "prev_hash", "hash"]
    label_columns = ["image_id", "user_id", *FINDING_COLUMNS, "no_finding", "exclude", "comment", "version",
                     "created_at", "updated_at"]  # fmt: skip
    with session_scope(engine) as session:
        bulk_insert(session, Review.__table__, label_columns, review_rows)
        bulk_insert(session, Adjudication.__table__, label_columns, adjudication_rows)
        bulk_insert(session, LabelEvent.__table__, event_columns, event_rows)
        rebuild_derived_tables(session)
    # Fresh planner statistics, as a database in use for a while has (PostgreSQL's autovacuum gathers them).
    if engine.dialect.name == "postgresql":
        with engine.execution_options(isolation_level="AUTOCOMMIT").connect() as connection:
            connection.exec_driver_sql("VACUUM ANALYZE")
    else:
        with engine.begin() as connection:
            connection.exec_driver_sql("ANALYZE")
    with session_scope(engine, read_only=True) as session:
        assert session.scalar(select(Image.id).where(Image.path.is_(None)).limit(1)) is None
    step(f"{len(review_rows):,} reviews, {len(adjudication_rows):,} adjudications")


def rebuild_derived_tables(session: Any) -> None:
    """Bring the tables the app derives from reviews up to date after the bulk insert (those it has)."""
    import importlib

    for module, function in (("db.effective", "rebuild"), ("db.adjudication", "rebuild_status")):
        try:
            rebuild = getattr(importlib.import_module(module), function)
        except (ImportError, AttributeError):  # a version of the app without it
            continue
        rebuild(session)


def evaluation_metrics(rng: Any) -> dict[str, Any]:
    """A version's `metrics`: full evaluation reports (curves included) as the evaluate job stores them."""
    import numpy as np

    from core.labels import FINDINGS
    from core.metrics import evaluation_report

    reports: dict[str, dict[str, Any]] = {}
    for labels in ("nlp", "reviewed"):
        reports[labels] = {}
        for split, n in (("test", 25_596), ("val", 11_000)):
            truth = rng.random((n, len(FINDINGS))) < 0.06
            prob = 1 / (
                1
                + np.exp(
                    -np.where(truth, rng.normal(0.5, 1.5, truth.shape), rng.normal(-2, 1.5, truth.shape))
                )
            )
            reports[labels][split] = evaluation_report(
                truth.astype(int), prob, model_name="bench", split=split, n_boot=20
            )
    return {"evaluations": reports, "training": {"mean_auroc": reports["nlp"]["val"]["mean_auroc"]}}


# ----------------------------------------------------------------------------------------------------
# The web process: drive every page with AppTest


class StatementCounter:
    """SQL statements and their seconds, over every engine of the process."""

    def __init__(self) -> None:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        self.count = 0
        self.seconds = 0.0
        self._started: list[float] = []
        event.listen(Engine, "before_cursor_execute", self._before)
        event.listen(Engine, "after_cursor_execute", self._after)

    def _before(self, *_: Any) -> None:
        self.count += 1
        self._started.append(time.perf_counter())

    def _after(self, *_: Any) -> None:
        if self._started:
            self.seconds += time.perf_counter() - self._started.pop()

    @contextmanager
    def measure(self, into: dict[str, list[float]], name: str) -> Iterator[None]:
        count, seconds, started = self.count, self.seconds, time.perf_counter()
        yield
        into.setdefault(f"{name}_s", []).append(time.perf_counter() - started)
        into.setdefault(f"{name}_statements", []).append(self.count - count)
        into.setdefault(f"{name}_sql_s", []).append(self.seconds - seconds)


def _user(url: str, role: str, index: int = 0) -> Any:
    from sqlalchemy import select

    from db.engine import session_scope
    from db.models import User
    from webapp.auth import SessionUser

    with session_scope(url, read_only=True) as session:
        user = session.scalars(select(User).where(User.role == role).order_by(User.id).offset(index)).first()
        return SessionUser(user.id, user.username, user.role)


def new_app(view: str, user: Any, state: dict[str, Any] | None = None) -> Any:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(VIEWS / view), default_timeout=900)
    at.session_state["user"] = user
    for key, value in (state or {}).items():
        at.session_state[key] = value
    return at


def _page_state(page: str) -> tuple[str, str, dict[str, Any]]:
    if page in QUEUES:
        queue, finding = QUEUES[page]
        state = {"review_strategy": queue, "review_seed": 12345}
        if finding:
            state["review_finding"] = finding
        return "review.py", "clinician", state
    view, role = OTHER_PAGES[page]
    return view, role, {}


def _check(at: Any, page: str, what: str) -> None:
    if at.exception:
        raise RuntimeError(f"{page}, {what}: {at.exception[0].message}")


def other_reader_saves(url: str, reader: Any) -> None:
    """Another reader saves a review (the label-derived figures of every page change)."""
    from sqlalchemy import select

    from core.labels import FINDINGS
    from db.engine import session_scope
    from db.models import Image, Review, User
    from db.reviews import save_review

    with session_scope(url) as session:
        user = session.get(User, reader.id)
        reviewed = select(Review.image_id).where(Review.user_id == user.id)
        image_id = session.scalar(select(Image.id).where(Image.id.not_in(reviewed)).order_by(Image.id.desc()))
        save_review(session, image_id, user, {FINDINGS[0]: True}, False, False, "", None)


def drive_pages(url: str, repeats: int, emit: Callable[[str, dict[str, Any]], None]) -> None:
    """Measure every page in this process (the app's web process)."""
    counter = StatementCounter()
    other = _user(url, "clinician", 1)
    for page in [*QUEUES, *OTHER_PAGES]:
        view, role, state = _page_state(page)
        user = _user(url, role)
        samples: dict[str, list[float]] = {}
        warm = new_app(view, user, state)
        warm.run()  # imports, the model, caches of the process: what any earlier visitor paid
        _check(warm, page, "warm-up")
        for _ in range(repeats):
            at = new_app(view, user, state)
            with counter.measure(samples, "open"):
                at.run()
            _check(at, page, "open")
        for _ in range(repeats):
            with counter.measure(samples, "rerun"):
                at.run()
            _check(at, page, "rerun")
        if page in QUEUES:
            for _ in range(repeats):
                at.button(key="review_save").click()
                with counter.measure(samples, "save_next"):
                    at.run()
                _check(at, page, "save")
                if at.error:
                    raise RuntimeError(f"{page}, save: {at.error[0].value}")
        elif page != "Models & ROC":
            for _ in range(repeats):
                other_reader_saves(url, other)
                with counter.measure(samples, "after_save"):
                    at.run()
                _check(at, page, "after another reader's save")
        emit(page, {name: statistics.median(values) for name, values in samples.items()})


def first_run(url: str, page: str) -> float:
    """Seconds of the page's first run in this (new) process."""
    view, role, state = _page_state(page)
    at = new_app(view, _user(url, role), state)
    started = time.perf_counter()
    at.run()
    seconds = time.perf_counter() - started
    _check(at, page, "first run")
    return seconds


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------------------------------
# Orchestration


def _child_env(url: str, home: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in ("CHEXNET_MODEL",)}
    env.update(DATABASE_URL=url, CHEXNET_HOME=str(home), OMP_NUM_THREADS="1")
    return env


def _run_child(args: list[str], url: str, home: Path, on_line: Callable[[dict[str, Any]], None]) -> None:
    command = [sys.executable, str(Path(__file__).resolve()), *args]
    with subprocess.Popen(
        command, env=_child_env(url, home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as child:
        assert child.stdout is not None and child.stderr is not None
        for line in child.stdout:
            if line.startswith("{"):
                on_line(json.loads(line))
        errors = child.stderr.read()
        if child.wait() != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed:\n{errors[-4000:]}")


@contextmanager
def postgres_database() -> Iterator[str]:
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    folder = tempfile.mkdtemp(prefix="chexnet-bench-pg-")
    try:
        started = subprocess.run(
            [str(POSTGRES_SCRIPT), "start", folder], capture_output=True, text=True, timeout=300, check=True
        )
        server = started.stdout.strip().splitlines()[-1]
        admin = create_engine(server, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.exec_driver_sql('CREATE DATABASE "bench"')
        admin.dispose()
        yield make_url(server).set(database="bench").render_as_string(hide_password=False)
    finally:
        subprocess.run([str(POSTGRES_SCRIPT), "stop", folder], capture_output=True, timeout=120, check=False)
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def backend_database(backend: str, folder: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{folder / 'bench.db'}"
    else:
        with postgres_database() as url:
            yield url


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    from tqdm import tqdm

    from core.paths import SHARED_SAMPLE_DIR
    from db.engine import dispose_engines

    pages = [*QUEUES, *OTHER_PAGES]
    per_backend = 4 + len(pages) * 2
    result: dict[str, Any] = {
        "images": args.images, "reviews": args.reviews, "readers": args.readers, "backends": {},
    }  # fmt: skip
    with (
        tempfile.TemporaryDirectory(prefix="chexnet-bench-") as tmp,
        tqdm(total=per_backend * len(args.backends), file=sys.stderr, unit="step", dynamic_ncols=True) as bar,
    ):
        folder = Path(tmp)
        sample = args.sample or SHARED_SAMPLE_DIR
        data = dataset_folder(sample, folder / "dataset", args.images)
        for backend in args.backends:
            home = folder / f"home-{backend}"
            home.mkdir()
            with backend_database(backend, folder) as url:

                def step(text: str, backend: str = backend) -> None:
                    bar.set_description(f"{backend}: {text}")
                    bar.update()

                build_database(url, data, sample, args, step)
                dispose_engines()
                figures: dict[str, Any] = {"pages": {}}

                def on_page(line: dict[str, Any], backend: str = backend, figures: dict = figures) -> None:
                    if "page" in line:
                        figures["pages"][line["page"]] = line["figures"]
                        bar.set_description(f"{backend}: {line['page']}")
                        bar.update()
                    else:
                        figures["peak_rss_mb"] = line["peak_rss_mb"]

                _run_child(["--drive", url, "--repeats", str(args.repeats)], url, home, on_page)
                for page in pages:
                    bar.set_description(f"{backend}: first run of {page}")

                    def on_first(line: dict[str, Any], page: str = page, figures: dict = figures) -> None:
                        figures["pages"][page]["first_run_s"] = line["first_run_s"]
                        figures["pages"][page]["first_run_peak_rss_mb"] = line["peak_rss_mb"]

                    _run_child(["--first-run", url, "--page", page], url, home, on_first)
                    bar.update()
                result["backends"][backend] = _shaped(figures)
    return result


def _shaped(figures: dict[str, Any]) -> dict[str, Any]:
    """The issue's JSON shape first (rerun_s, save_next_s, first_run_s, statements), details after."""
    pages = {}
    for page, values in figures["pages"].items():
        shaped = {
            "rerun_s": round(values["rerun_s"], 3),
            "save_next_s": round(values["save_next_s"], 3) if "save_next_s" in values else None,
            "first_run_s": round(values["first_run_s"], 3),
            "statements": int(values["rerun_statements"]),
        }
        for name, value in sorted(values.items()):
            if name not in shaped:
                shaped[name] = round(value, 3) if isinstance(value, float) else value
        pages[page] = shaped
    return {"peak_rss_mb": round(figures["peak_rss_mb"], 1), "pages": pages}


def _table(result: dict[str, Any]) -> str:
    lines = [f"{result['images']:,} images, {result['reviews']:,} reviews, {result['readers']} readers"]
    for backend, figures in result["backends"].items():
        lines.append(f"\n{backend} (web process peak RSS {figures['peak_rss_mb']:.0f} MB)")
        lines.append(f"{'page':<24}{'open':>8}{'rerun':>8}{'save→next':>11}{'first run':>11}{'SQL/run':>9}")
        for page, v in figures["pages"].items():
            save = v["save_next_s"] if v["save_next_s"] is not None else v.get("after_save_s")
            save_text = f"{save:.2f}" if save is not None else "—"
            lines.append(
                f"{page:<24}{v.get('open_s', 0):>8.2f}{v['rerun_s']:>8.2f}"
                f"{save_text:>11}{v['first_run_s']:>11.2f}{v['statements']:>9}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=NIH_IMAGES)
    parser.add_argument("--reviews", type=int, default=30_000)
    parser.add_argument("--readers", type=int, default=20)
    parser.add_argument("--versions", type=int, default=30, help="model versions with evaluation reports")
    parser.add_argument("--repeats", type=int, default=5, help="runs per figure (the median is reported)")
    parser.add_argument("--backends", default="sqlite,postgresql", help="comma-separated: sqlite,postgresql")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sample", type=Path, help="the ChestX-ray14 folder (default: the shared sample)")
    parser.add_argument("--json", action="store_true", help="print only the JSON document")
    parser.add_argument("--drive", metavar="URL", help=argparse.SUPPRESS)  # the web process (internal)
    parser.add_argument("--first-run", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--page", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.drive:
        drive_pages(
            args.drive,
            args.repeats,
            lambda page, figures: print(json.dumps({"page": page, "figures": figures}), flush=True),
        )
        print(json.dumps({"peak_rss_mb": peak_rss_mb()}), flush=True)
        return 0
    if args.first_run:
        seconds = first_run(args.first_run, args.page)
        print(json.dumps({"first_run_s": seconds, "peak_rss_mb": peak_rss_mb()}), flush=True)
        return 0

    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(args.backends) - {"sqlite", "postgresql"}
    if unknown or args.readers < 2 or args.images < 1_000 or args.reviews < 6:
        parser.error("--backends takes sqlite,postgresql; --readers >= 2, --images >= 1000, --reviews >= 6")
    result = run_benchmark(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(_table(result))
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
