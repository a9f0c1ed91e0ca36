"""The training worker (`python -m jobs`): polls the job queue forever (or `--once`) and runs each job.

The database is $DATABASE_URL, else the SQLite file under $CHEXNET_HOME; `--database-url` overrides.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from core import settings
from core.cli.console import EXIT_INTERRUPTED, run_command


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jobs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--once", action="store_true", help="run at most one queued job, then exit")
    parser.add_argument(
        "--database-url", help="default: $DATABASE_URL, else the SQLite file in $CHEXNET_HOME"
    )
    parser.add_argument(
        "--device",
        default=settings.worker_device(),
        help=f"auto (CUDA when present) | cuda | cpu (env {settings.CHEXNET_WORKER_DEVICE.name})",
    )
    parser.add_argument(
        "--gpus",
        type=int,
        default=settings.worker_gpus(),
        help="processes per training job, one per GPU (torchrun when > 1; "
        f"env {settings.CHEXNET_WORKER_GPUS.name})",
    )
    parser.add_argument("--poll", type=float, default=2.0, help="seconds between polls of an empty queue")
    parser.add_argument(
        "--stale-after",
        type=float,
        default=120.0,
        help="seconds without a heartbeat after which a running job is marked interrupted",
    )
    parser.add_argument("--heartbeat", type=float, default=5.0, help="seconds between heartbeats")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of the AUROC CIs")
    parser.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "torch", "openvino"],
        help="inference backend of evaluations and predictions",
    )
    parser.add_argument("--worker-id", help="default: HOST:PID")
    return parser


def _run_worker(args: argparse.Namespace) -> int:
    from jobs.worker import Worker, WorkerSettings
    from jobs.worker_status import remove_worker_status

    worker_settings = WorkerSettings(
        poll_s=args.poll,
        heartbeat_s=args.heartbeat,
        stale_after_s=args.stale_after,
        device=args.device,
        nproc=max(1, args.gpus),
        eval_backend=args.backend,
        n_boot=args.n_boot,
    )
    worker = Worker(args.database_url, worker_id=args.worker_id, settings=worker_settings)
    try:
        if args.once:
            job_id = worker.run_once()
            remove_worker_status(worker.worker_id)
            print(f"Ran job {job_id}." if job_id is not None else "No job was queued.", flush=True)
        else:
            worker.run_forever()
    except KeyboardInterrupt:
        logging.getLogger("chexnet.worker").info("Worker %s stopped.", worker.worker_id)
        return EXIT_INTERRUPTED
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s worker %(levelname)s %(message)s")
    logging.getLogger("chexnet").setLevel(logging.INFO)  # ours in full; libraries' (alembic...) warnings only
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    return run_command(_run_worker, args)


if __name__ == "__main__":
    sys.exit(main())
