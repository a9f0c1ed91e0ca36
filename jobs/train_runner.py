"""One rank of a multi-GPU fine-tune: `torchrun --nproc_per_node=N -m jobs.train_runner CONFIG EVENTS`.

Started by jobs.torchrun. CONFIG holds `TrainConfig.to_json()`; rank 0 appends each progress event to
EVENTS as one JSON line, and a final {"phase": "error", "message": ...} line when training fails with
a sentence for a person, which the worker reads back.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from core.distributed import env_dist_info
from core.errors import UserError
from core.training import TrainConfig, TrainProgress, train


def main(argv: Sequence[str] | None = None) -> int:
    config_path, events_path = (argv if argv is not None else sys.argv[1:])[:2]
    config = TrainConfig.from_json(Path(config_path).read_text())
    is_main = env_dist_info().is_main

    def write(record: dict) -> None:
        with open(events_path, "a") as events:
            events.write(json.dumps(record) + "\n")

    def progress(event: TrainProgress) -> None:
        write(asdict(event))

    try:
        train(config, progress if is_main else None)
    except UserError as exc:
        if is_main:
            write({"phase": "error", "message": str(exc)})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
