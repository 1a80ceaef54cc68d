"""Running one task per block on a thread pool, bounded, with results in block order."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


def map_blocks(
    executor: ThreadPoolExecutor,
    count: int,
    task: Callable[[int], T],
    max_inflight: int,
    on_done: Callable[[int, T], None],
) -> None:
    """Run ``task(b)`` for b in 0..count-1, at most ``max_inflight`` at once.

    ``on_done`` sees the results in block order on the calling thread (so it needs no
    lock). The bound is what keeps memory flat whatever the disk size. On an error, the
    blocks not started are cancelled and the running ones are waited for, so no worker
    still touches a source or target the caller is about to close.
    """
    inflight: deque[tuple[int, Future[T]]] = deque()
    try:
        for b in range(count):
            if len(inflight) >= max_inflight:
                index, future = inflight.popleft()
                on_done(index, future.result())
            inflight.append((b, executor.submit(task, b)))
        while inflight:
            index, future = inflight.popleft()
            on_done(index, future.result())
    finally:
        for _, future in inflight:
            future.cancel()
        for _, future in inflight:
            if not future.cancelled():
                future.exception()
