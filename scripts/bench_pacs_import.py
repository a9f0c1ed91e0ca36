#!/usr/bin/env python
"""Import throughput from a PACS over DICOMweb (issue 18): instances/s per stage and memory over the run.

Starts a throw-away Orthanc (tests/orthanc_fixtures.py's `running_orthanc`, HTTP authentication on),
turns the shared sample's PNGs into CR/DX instances (`dicom_from_png`: 512x512, 16-bit; cycled with
fresh UIDs and patients to reach N) and stores them with STOW-RS, then imports them with the worker's
own code (`jobs.pacs_import.import_instances`) into a fresh database: SQLite under a temporary
CHEXNET_HOME, or `--database-url` (an empty PostgreSQL database, say).

    .venv/bin/python scripts/bench_pacs_import.py                    # 1000 instances, SQLite
    .venv/bin/python scripts/bench_pacs_import.py --instances 200 --json
    .venv/bin/python scripts/bench_pacs_import.py --database-url postgresql+psycopg://u:p@host/db

Reports instances/s of each stage (the import's stage timer: search = QIDO-RS, fetch = WADO-RS,
deidentify, decode_check = read_xray of the de-identified copy, register = the database transaction
with the file write) and end to end (search to the last instance stored), and this process's resident
memory (VmRSS, sampled every 50 ms) before the import, at 10%, 50% and 100% of it and at its peak.
The issue's target: >= 20 instances/s end to end on a 2-core machine, with memory flat.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

STOW_BATCH = 10  # instances per STOW-RS request (and in memory at once while the PACS is filled)
MILESTONES = (10, 50, 100)  # percent of the import at which RSS is reported


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class RssSampler(threading.Thread):
    """The peak of this process's VmRSS while it runs (sampled every `every_s`)."""

    def __init__(self, every_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.every_s, self.peak, self.samples = every_s, 0.0, 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, rss_mb())
            self.samples += 1
            self._done.wait(self.every_s)

    def stop(self) -> float:
        self._done.set()
        self.join()
        return max(self.peak, rss_mb())


def fill_pacs(server: Any, sample: Path, n: int, bar: Any) -> None:
    """N instances: the sample PNGs cycled, each a new patient, study, series and instance."""
    from tests.orthanc_fixtures import dicom_from_png, sample_views, stow

    views = sample_views(sample)
    pngs = sorted((sample / "images").glob("*.png"))
    batch = []
    for number in range(n):
        png = pngs[number % len(pngs)]
        ds, _ = dicom_from_png(png, number=number, view=views[png.name], modality=("CR", "DX")[number % 2])
        batch.append(ds)
        if len(batch) == STOW_BATCH or number == n - 1:
            stow(server, batch)
            bar.update(len(batch))
            batch = []


def run_import(url: str, server: Any, n: int, bar: Any) -> dict[str, Any]:
    from db import pacs
    from db.engine import dispose_engine, get_engine, session_scope
    from jobs.dicomweb import SearchCriteria
    from jobs.pacs_import import STAGES, import_instances

    engine = get_engine(url)
    with session_scope(engine) as session:
        connection_id = pacs.create_connection(
            session, "Bench PACS", server.dicomweb_url, auth="basic", username=server.user,
            secret=server.password,
        ).id  # fmt: skip
    seconds: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)

    def stage_timer(stage: str, spent: float, count: int) -> None:
        seconds[stage] += spent
        counts[stage] += count

    rss: dict[str, float] = {"before_mb": rss_mb()}
    marks: dict[int, list[int]] = defaultdict(list)  # instances done -> the percentages reached there
    for pct in MILESTONES:
        marks[max(1, n * pct // 100)].append(pct)

    def progress(done: int, total: int) -> None:
        bar.update(done - bar.n)
        for pct in marks.get(done, ()):
            rss[f"at_{pct}pct_mb"] = rss_mb()

    sampler = RssSampler()
    sampler.start()
    started = time.perf_counter()
    summary = import_instances(
        engine, connection_id, SearchCriteria(), progress=progress, stage_timer=stage_timer
    )
    wall = time.perf_counter() - started
    rss["peak_mb"] = max(sampler.stop(), *rss.values())  # the milestones' readings are samples too
    dispose_engine(url)
    stages = {
        stage: {
            "instances": counts[stage],
            "seconds": round(seconds[stage], 3),
            "instances_per_s": round(counts[stage] / seconds[stage], 1) if seconds[stage] else None,
        }
        for stage in STAGES
    }
    stages["end_to_end"] = {
        "instances": summary.imported,
        "seconds": round(wall, 3),
        "instances_per_s": round(summary.imported / wall, 1) if wall else None,
    }
    return {
        "found": summary.found,
        "imported": summary.imported,
        "skipped": summary.skipped,
        "stages": stages,
        "rss": {name: round(value, 1) for name, value in rss.items()},
        "rss_growth_10_to_100pct_mb": round(rss.get("at_100pct_mb", 0) - rss.get("at_10pct_mb", 0), 1),
    }


def _table(result: dict[str, Any]) -> str:
    cpu = result["cpu"]
    lines = [
        f"{cpu['model']} ({cpu['logical_cpus']} logical CPUs; {', '.join(cpu['features']) or 'no AVX2'})",
        f"{result['instances']:,} instances ({result['image']}), database {result['database']}: "
        f"{result['imported']:,} imported, {result['skipped']:,} left out; PACS filled in "
        f"{result['fill_seconds']:.1f} s",
        f"{'stage':<14}{'instances':>10}{'seconds':>10}{'per s':>10}",
    ]
    for stage, figures in result["stages"].items():
        rate = figures["instances_per_s"]
        lines.append(
            f"{stage:<14}{figures['instances']:>10,}{figures['seconds']:>10.2f}"
            f"{(f'{rate:.1f}' if rate is not None else '-'):>10}"
        )
    rss = result["rss"]
    lines.append(
        f"RSS MB: before {rss['before_mb']:.0f}, "
        + ", ".join(f"{name.removeprefix('at_').removesuffix('_mb')} {value:.0f}"
                    for name, value in rss.items() if name != "before_mb")
    )  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=1000, help="instances in the PACS (default 1000)")
    parser.add_argument(
        "--database-url", help="an empty database to import into (default: a new SQLite file)"
    )
    parser.add_argument("--sample", type=Path, help="the ChestX-ray14 folder (default: the shared sample)")
    parser.add_argument("--json", action="store_true", help="print only the JSON document on stdout")
    args = parser.parse_args(argv)
    if args.instances < 1:
        parser.error("--instances must be at least 1")

    import pytest
    from tqdm import tqdm

    from core.cpu_info import cpu_description
    from core.paths import SHARED_SAMPLE_DIR
    from tests.orthanc_fixtures import running_orthanc

    sample = args.sample or SHARED_SAMPLE_DIR
    cpu = cpu_description()
    with tempfile.TemporaryDirectory(prefix="chexnet-bench-pacs-") as tmp:
        folder = Path(tmp)
        os.environ["CHEXNET_HOME"] = str(folder / "home")  # the uploads and the pseudonym key land here
        url = args.database_url or f"sqlite:///{folder / 'home' / 'bench.db'}"
        (folder / "home").mkdir()
        try:
            with running_orthanc(folder / "pacs") as server:
                with tqdm(total=args.instances, desc="fill the PACS (STOW-RS)", unit="inst",
                          file=sys.stderr, dynamic_ncols=True) as bar:  # fmt: skip
                    started = time.perf_counter()
                    fill_pacs(server, sample, args.instances, bar)
                    fill_seconds = time.perf_counter() - started
                with tqdm(total=args.instances, desc="import", unit="inst", file=sys.stderr,
                          dynamic_ncols=True) as bar:  # fmt: skip
                    figures = run_import(url, server, args.instances, bar)
        except pytest.skip.Exception as unavailable:  # running_orthanc's "not installed / did not start"
            print(f"error: {unavailable.msg}", file=sys.stderr)
            return 2
    result = {
        "benchmark": "pacs_import",
        "instances": args.instances,
        "image": "512x512 16-bit CR/DX",
        "database": "postgresql" if args.database_url and "postgres" in args.database_url else "sqlite",
        "cpu": {
            "model": cpu["model"],
            "logical_cpus": cpu["logical_cpus"],
            "features": [name for name, present in cpu["features"].items() if present],
            "avx2": cpu["features"]["avx2"],
            "avx512f": cpu["features"]["avx512f"],
        },
        "fill_seconds": round(fill_seconds, 2),
        **figures,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
