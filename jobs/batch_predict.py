"""The one batch loop of the jobs that run a model over many images (predict, its shards, screen).

A job hands in its batches (the pixels to predict, and how many of the job's images each one stands
for, unreadable ones included); the loop checks for cancellation between batches, runs the predictor
and reports how many images are done once the caller has handled a batch's predictions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Batch:
    pixels: list[np.ndarray]  # grey uint8 images to predict
    consumed: int  # the job's images this batch stands for (those it could not read too)
    keys: list[Any] = field(default_factory=list)  # the caller's id of each image in `pixels`
    file_bytes: list[bytes | None] | None = None  # each image's file, for the OOD gate's colour check


def predict_batches(
    predictor: Any,
    batches: Iterable[Batch],
    *,
    check_ood: bool,
    on_done: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[tuple[Batch, list[Any]]]:
    """(batch, its predictions) per batch, in order; stops early (without a batch) when `should_stop()`.

    `on_done(n)`: the job's images handled so far, called after the caller has dealt with a batch.
    """
    done = 0
    for batch in batches:
        if should_stop is not None and should_stop():
            return
        predictions = predictor.predict(
            batch.pixels, batch_size=max(len(batch.pixels), 1), file_bytes=batch.file_bytes,
            check_ood=check_ood,
        )  # fmt: skip
        yield batch, predictions
        done += batch.consumed
        if on_done is not None:
            on_done(done)
