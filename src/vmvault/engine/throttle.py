"""Token-bucket rate limiting (bytes per second), shared safely between threads."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

INTERRUPT_EVERY = 0.2  # seconds between looks for a cancel while a wait lasts


class Bucket(Protocol):
    """What the engine asks of a rate cap: take units, waiting for them. ``TokenBucket``
    is this process's; a fleet's shared one lives in Redis (``vmvault.cluster.redis_limits``)."""

    rate: float

    def consume(self, amount: float, interrupt: Callable[[], None] | None = None) -> None: ...


def wait_for(
    wait: float,
    interrupt: Callable[[], None] | None,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Sleep ``wait`` seconds, calling ``interrupt`` every ``INTERRUPT_EVERY`` seconds."""
    while wait > 0:
        step = min(wait, INTERRUPT_EVERY) if interrupt is not None else wait
        sleep(step)
        wait -= step
        if interrupt is not None and wait > 0:
            interrupt()


class TokenBucket:
    """Allows ``rate`` units per second on average and bursts of up to ``burst`` units.

    ``consume`` blocks until the units are available; a request larger than the burst is
    allowed to take the bucket into debt, so big reads are paced rather than refused.
    """

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = burst if burst is not None else rate
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.burst
        self._stamp = clock()
        self._lock = threading.Lock()

    def reserve(self, amount: float) -> float:
        """Take ``amount`` units now and return how long the caller must wait for them."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens -= amount
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def consume(self, amount: float, interrupt: Callable[[], None] | None = None) -> None:
        """Take ``amount`` units, waiting for them; ``interrupt`` is called every
        ``INTERRUPT_EVERY`` seconds of the wait and may raise to abandon it (a cancel)."""
        wait_for(self.reserve(amount), interrupt, self._sleep)
