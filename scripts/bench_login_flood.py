"""Measure database writes during a login flood: N threads try wrong passwords for T seconds (each a
new username and client, so throttling never spares the argon2 check) while one thread makes small
writes, as the worker's heartbeat does. Prints the writes' latency (median, 95th percentile, max) and
how many failed. On SQLite a login used to hold the write lock through argon2, so writes waited.

    .venv/bin/python scripts/bench_login_flood.py [--threads 4] [--seconds 20] [--database-url URL]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import update  # noqa: E402

from db import accounts  # noqa: E402
from db.engine import dispose_engines, get_engine, session_scope  # noqa: E402
from db.models import TrainingJob  # noqa: E402


def run(url: str, threads: int, seconds: float) -> dict[str, float]:
    engine = get_engine(url)
    with session_scope(engine) as session:
        accounts.create_user(session, "flood-target", "the real passphrase here", role="clinician")
        job = TrainingJob(kind="fine_tune", status="running", params={})
        session.add(job)
        session.flush()
        job_id = job.id
    stop = time.monotonic() + seconds
    logins = [0] * threads
    login_errors: list[str] = []
    latencies: list[float] = []
    write_errors: list[str] = []

    def flood(index: int) -> None:
        n = 0
        while time.monotonic() < stop:
            n += 1
            client = accounts.LoginClient(address=f"10.{index}.{n // 250}.{n % 250}")
            try:
                accounts.log_in(engine, f"nobody-{index}-{n}", "a wrong password!", client)
                accounts.log_in(engine, "flood-target", f"wrong guess {n}", client)
                logins[index] += 2
            except Exception as exc:  # counted and printed: the measurement itself must finish
                login_errors.append(f"{type(exc).__name__}: {exc}"[:200])

    def writer() -> None:
        while time.monotonic() < stop:
            started = time.perf_counter()
            try:
                with session_scope(engine) as session:
                    session.execute(
                        update(TrainingJob)
                        .where(TrainingJob.id == job_id)
                        .values(heartbeat_at=accounts.utcnow())
                    )
                latencies.append(time.perf_counter() - started)
            except Exception as exc:  # a failed write is the result being measured
                write_errors.append(f"{type(exc).__name__}: {exc}"[:200])
            time.sleep(0.05)

    workers = [threading.Thread(target=flood, args=(i,)) for i in range(threads)]
    workers.append(threading.Thread(target=writer))
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    latencies.sort()
    result = {
        "backend": engine.dialect.name,
        "login_threads": threads,
        "seconds": seconds,
        "failed_logins_checked": sum(logins),
        "login_errors": len(login_errors),
        "writes": len(latencies),
        "write_failures": len(write_errors),
        "write_latency_median_ms": round(statistics.median(latencies) * 1000, 1) if latencies else None,
        "write_latency_p95_ms": round(latencies[int(0.95 * (len(latencies) - 1))] * 1000, 1)
        if latencies
        else None,
        "write_latency_max_ms": round(latencies[-1] * 1000, 1) if latencies else None,
    }
    for error in (login_errors + write_errors)[:3]:
        print("error:", error, file=sys.stderr)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--database-url", help="default: a new SQLite file in a temporary folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        url = args.database_url or f"sqlite:///{Path(folder) / 'flood.db'}"
        print(json.dumps(run(url, args.threads, args.seconds), indent=2))
        dispose_engines()


if __name__ == "__main__":
    main()
