#!/usr/bin/env python
"""Images per second of the "predict" job (storing a version's predictions for every imported image).

Imports the shared NIH sample into a throw-away SQLite database under a temporary CHEXNET_HOME,
registers the bundled demo model, and runs the predict job through the real worker: first in one
process with a cold image cache (every file decoded into it), then again with the cache warm, then
sharded over `--nproc` torchrun processes. The job's own message reports the network's images/s; the
wall time here includes the cache and the database writes.

    .venv/bin/python scripts/bench_predict_job.py [--nproc 2] [--backend torch|openvino|auto] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2, help="processes of the sharded run")
    parser.add_argument("--backend", default="torch", choices=["auto", "torch", "openvino"])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    folder = Path(tempfile.mkdtemp(prefix="chexnet-predict-bench-"))
    os.environ["CHEXNET_HOME"] = str(folder / "home")  # before the app's modules read it
    os.environ["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "1")

    from core.cpu_info import cpu_description
    from core.paths import BUNDLED_MODEL_DIR, SHARED_SAMPLE_DIR
    from db.engine import get_engine, session_scope
    from db.importer import import_chestxray14
    from db.registry import promote_version, register_existing_model
    from jobs.progress import JobProgress
    from jobs.queue import enqueue_predict
    from jobs.run import WorkerSettings
    from jobs.worker import Worker

    engine = get_engine(f"sqlite:///{folder / 'bench.db'}")
    import_chestxray14(engine, SHARED_SAMPLE_DIR, hash_images=False)
    with session_scope(engine) as session:
        promote_version(session, register_existing_model(session, BUNDLED_MODEL_DIR).id)

    runs = {}
    for label, nproc in (("cold cache, 1 process", 1), ("warm cache, 1 process", 1),
                         (f"warm cache, {args.nproc} processes", args.nproc)):  # fmt: skip
        with session_scope(engine) as session:
            job_id = enqueue_predict(session).id
        settings = WorkerSettings(device="cpu", eval_backend=args.backend, nproc=nproc, poll_s=0.1)
        print(f"{label}…", file=sys.stderr, flush=True)
        started = time.perf_counter()
        assert Worker(engine, settings=settings).run_once() == job_id
        wall = time.perf_counter() - started
        with session_scope(engine, read_only=True) as session:
            from db.jobs import get_job

            job = get_job(session, job_id)
            status, progress = job.status, JobProgress.from_dict(job.progress)
        runs[label] = {"status": status, "wall_s": round(wall, 1), "message": progress.message}
        print(f"  {status} in {wall:.1f} s: {progress.message}", file=sys.stderr, flush=True)
    cpu = cpu_description()
    result = {
        "benchmark": "predict_job",
        "backend": args.backend,
        "cpu": {
            "model": cpu["model"],
            "logical_cpus": cpu["logical_cpus"],
            "features": [name for name, present in cpu["features"].items() if present],
        },  # fmt: skip
        "runs": runs,
    }
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
