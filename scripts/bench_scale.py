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

from scale_database import build_database, dataset_folder  # noqa: E402 - beside this script

VIEWS = REPO_ROOT / "webapp" / "views"
POSTGRES_SCRIPT = REPO_ROOT / "scripts" / "postgres.sh"
NIH_IMAGES = 112_120
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
    """This process's peak resident memory. VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over
    fork and exec, so a child would report at least its parent's peak (here the database builder's)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
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
