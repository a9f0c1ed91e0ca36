"""Ordered read-ahead on a thread pool: the one way data loading overlaps decoding with compute here."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


def prefetch_map(
    fn: Callable[[Item], Result], items: Sequence[Item], *, workers: int, depth: int, name: str
) -> Iterator[Result]:
    """`fn(item)` for each item, yielded in order, with at most `depth` results computed ahead.

    Bounded so that a 25,000-image pass never holds every decoded image in memory at once.
    """
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix=name) as pool:
        pending = deque(pool.submit(fn, item) for item in items[:depth])
        submitted = len(pending)
        while pending:
            result = pending.popleft().result()
            if submitted < len(items):
                pending.append(pool.submit(fn, items[submitted]))
                submitted += 1
            yield result
