"""Predicting a list of cached images, in this process or sharded over processes (one per GPU) with the
same torchrun launch as training: `torchrun --standalone --nproc_per_node=N -m jobs.predict_shards SPEC`.

SPEC is a JSON file: the model folder, the preprocessed image cache (core.data.cache), the cache rows to
predict, the backend and device kind, and an output folder. Rank r takes rows r, r+N, r+2N ...; it writes
its probabilities to OUT/rank-r.npz when done and, as it goes, the number of rows it has finished to
OUT/rank-r.progress. The worker sums those for the job's progress and merges the shards; storing them
(db.registry.save_predictions) replaces a version's earlier predictions of an image, so a rerun or a
resumed job never duplicates rows.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from core.data.cache import ImageCache
from core.distributed import env_dist_info
from jobs.batch_predict import Batch, predict_batches

BATCH = 32


@dataclass(frozen=True)
class ShardSpec:
    model_dir: str
    cache_dir: str
    rows: list[int]  # cache rows, in the order of the job's image list
    backend: str
    device_kind: str  # "cpu" | "cuda"
    out_dir: str

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def read(cls, path: Path) -> ShardSpec:
        return cls(**json.loads(path.read_text()))


def predict_rows(
    predictor,
    cache: ImageCache,
    rows: Sequence[int],
    on_batch: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> np.ndarray:
    """float32 [len(rows), n_labels] probabilities of cached images, BATCH at a time (the network runs
    on the cache's 256 px centre squares: the same model input as from the original files)."""
    out = np.empty((len(rows), len(predictor.labels)), dtype=np.float32)
    spans = (range(start, min(start + BATCH, len(rows))) for start in range(0, len(rows), BATCH))
    batches = (Batch(list(cache.batch(rows[s.start : s.stop])), len(s), list(s)) for s in spans)
    for batch, predictions in predict_batches(
        predictor, batches, check_ood=False, on_done=on_batch, should_stop=should_stop
    ):
        for position, prediction in zip(batch.keys, predictions, strict=True):
            out[position] = [prediction.probabilities[label] for label in predictor.labels]
    return out


def shard_of(n_rows: int, rank: int, world_size: int) -> np.ndarray:
    """Positions (into the job's row list) that rank `rank` of `world_size` predicts."""
    return np.arange(rank, n_rows, world_size)


def shard_files(out_dir: Path, rank: int) -> tuple[Path, Path]:
    return out_dir / f"rank-{rank}.npz", out_dir / f"rank-{rank}.progress"


def merge_shards(out_dir: Path, n_rows: int, world_size: int) -> np.ndarray:
    """The job's [n_rows, n_labels] probabilities from every rank's file, in the job's order."""
    merged: np.ndarray | None = None
    for rank in range(world_size):
        result, _ = shard_files(out_dir, rank)
        with np.load(result) as shard:
            positions, probabilities = shard["positions"], shard["probabilities"]
        if merged is None:
            merged = np.full((n_rows, probabilities.shape[1]), np.nan, dtype=np.float32)
        merged[positions] = probabilities
    if merged is None or np.isnan(merged).any():
        raise RuntimeError("A prediction shard is missing rows.")
    return merged


def main(argv: Sequence[str] | None = None) -> int:
    import torch

    from core.inference.predictor import Predictor

    spec = ShardSpec.read(Path((argv if argv is not None else sys.argv[1:])[0]))
    info = env_dist_info()
    if spec.device_kind == "cuda":
        device = f"cuda:{info.local_rank}"
    else:
        device = "cpu"
        torch.set_num_threads(1)  # one process per core
    out_dir = Path(spec.out_dir)
    result, progress = shard_files(out_dir, info.rank)
    positions = shard_of(len(spec.rows), info.rank, info.world_size)
    predictor = Predictor.from_path(spec.model_dir, backend=spec.backend, device=device)
    cache = ImageCache.open(spec.cache_dir)

    def report(done: int) -> None:
        progress.write_text(str(done))

    probabilities = predict_rows(predictor, cache, [spec.rows[p] for p in positions], report)
    partial = result.with_suffix(".partial.npz")
    np.savez(partial, positions=positions, probabilities=probabilities)
    os.replace(partial, result)  # whole or absent: the worker merges only complete shards
    return 0


if __name__ == "__main__":
    sys.exit(main())
