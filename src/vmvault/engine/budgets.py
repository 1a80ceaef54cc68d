"""The live budgets every job of this process shares: token buckets per pool and per disk.

A pool's egress (MB/s) and request rate are shared by all disks read from it, whichever VM
they belong to; each disk also has its own cap. Restores take their share of the same pool
buckets as backups.

Where a pool's buckets come from is a ``PoolBudget``: this process's own (the default), or,
for workers of a fleet, buckets kept in Redis and shared by every worker
(``vmvault.cluster.redis_limits.RedisPoolBudget``, installed by ``use_pool_budget``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol

from vmvault.engine.throttle import Bucket, TokenBucket

_lock = threading.Lock()
_pools: dict[str, tuple[TokenBucket, TokenBucket]] = {}
_slots: dict[str, tuple[int, threading.BoundedSemaphore]] = {}


def pool_slots(pool: str, disks_in_flight: int) -> threading.BoundedSemaphore:
    """The semaphore bounding how many disks of ``pool`` are read at once (seed: 20)."""
    with _lock:
        found = _slots.get(pool)
        if found is None or found[0] != disks_in_flight:
            found = (disks_in_flight, threading.BoundedSemaphore(disks_in_flight))
            _slots[pool] = found
        return found[1]


class PoolBudget(Protocol):
    """Where a pool's shared (bytes, requests) buckets come from."""

    def buckets(
        self, pool: str, egress_mb_per_s: float, requests_per_second: float
    ) -> tuple[Bucket, Bucket]: ...


class LocalPoolBudget:
    """This process's buckets: every job of the process shares them."""

    def buckets(
        self, pool: str, egress_mb_per_s: float, requests_per_second: float
    ) -> tuple[Bucket, Bucket]:
        return local_pool_buckets(pool, egress_mb_per_s, requests_per_second)


_budget: PoolBudget = LocalPoolBudget()


def use_pool_budget(budget: PoolBudget | None) -> None:
    """Make ``budget`` the source of every pool's buckets from now on (None: this
    process's own again). A fleet worker installs Redis's at its start."""
    global _budget
    _budget = budget if budget is not None else LocalPoolBudget()


def pool_buckets(
    pool: str, egress_mb_per_s: float, requests_per_second: float
) -> tuple[Bucket, Bucket]:
    """The (bytes, requests) buckets of a pool, from the installed ``PoolBudget``."""
    return _budget.buckets(pool, egress_mb_per_s, requests_per_second)


def local_pool_buckets(
    pool: str, egress_mb_per_s: float, requests_per_second: float
) -> tuple[TokenBucket, TokenBucket]:
    """The (bytes, requests) buckets of a pool, created once per process and shared."""
    with _lock:
        buckets = _pools.get(pool)
        wanted = (egress_mb_per_s * 1e6, requests_per_second)
        if buckets is None or (buckets[0].rate, buckets[1].rate) != wanted:
            buckets = (
                TokenBucket(wanted[0], burst=max(wanted[0] / 10, 4 * 1024 * 1024)),
                TokenBucket(wanted[1], burst=max(wanted[1] / 10, 1.0)),
            )
            _pools[pool] = buckets
        return buckets


@dataclass(frozen=True)
class DiskBudget:
    """What one disk's transfer must respect: its own cap, its pool's shared buckets, and
    a place among the pool's disks in flight."""

    byte_buckets: tuple[Bucket, ...] = ()
    request_buckets: tuple[Bucket, ...] = ()
    slot: threading.BoundedSemaphore | None = None


def disk_budget(
    disk_mb_per_s: float | None,
    pool: str | None = None,
    *,
    egress_mb_per_s: float = 0.0,
    requests_per_second: float = 0.0,
    disks_in_flight: int = 0,
) -> DiskBudget:
    own: tuple[Bucket, ...] = (
        (TokenBucket(disk_mb_per_s * 1e6, burst=4 * 1024 * 1024),) if disk_mb_per_s else ()
    )
    if pool is None:
        return DiskBudget(own)
    egress, requests = pool_buckets(pool, egress_mb_per_s, requests_per_second)
    return DiskBudget((*own, egress), (requests,), pool_slots(pool, disks_in_flight))
