"""Admission as a gate with leases: the fleet's form of ``jobs.admission``.

A job asks the gate before it starts (``try_admit``) and holds a lease while it runs; the
lease is renewed by the job's heartbeat and expires by itself when its worker dies, so a
place is never lost. The rules are ``jobs.admission.admit``'s, the planner's too.

Two implementations share the callers (the broker's task in ``vmvault.cluster.worker``):
``LocalGate`` here, for the jobs of one process, and ``RedisGate``
(``vmvault.cluster.redis_limits``), one Lua script per step, for every worker of a fleet.
The embedded worker (``jobs.worker``) needs no lease: its catalog rows are its running set.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

from vmvault.jobs.admission import JobLoad, Limits, admit


class AdmissionGate(Protocol):
    def try_admit(self, lease: str, load: JobLoad) -> str | None:
        """None when the job may start now (``lease`` is then held), else why it waits."""
        ...

    def renew(self, lease: str, load: JobLoad) -> None:
        """Extend a held lease (one that expired meanwhile is taken again: the job runs)."""
        ...

    def release(self, lease: str) -> None: ...

    def wait_turn(self, job_id: int, holder: str) -> bool:
        """Mark job ``job_id`` as waited for by ``holder`` (one message's task), or keep
        the mark: False when another holder waits for it already (a duplicate message:
        it can end). The mark expires as a lease does, with its holder."""
        ...

    def done_waiting(self, job_id: int, holder: str) -> None: ...

    def waiting(self, job_id: int) -> bool:
        """Whether some task waits for the job's turn (its message is not lost)."""
        ...


class LocalGate:
    """Leases in this process's memory, expiring after ``ttl`` seconds without renewal."""

    def __init__(
        self, limits: Limits, ttl: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limits, self.ttl, self.clock = limits, ttl, clock
        self._leases: dict[str, tuple[float, JobLoad]] = {}
        self._waits: dict[int, tuple[str, float]] = {}  # job -> (holder, expiry)
        self._lock = threading.Lock()

    def _live(self) -> list[JobLoad]:
        now = self.clock()
        for lease in [k for k, (expiry, _) in self._leases.items() if expiry <= now]:
            del self._leases[lease]
        return [load for _, load in self._leases.values()]

    def try_admit(self, lease: str, load: JobLoad) -> str | None:
        with self._lock:
            why = admit(self._live(), load, self.limits)
            if why is None:
                self._leases[lease] = (self.clock() + self.ttl, load)
            return why

    def renew(self, lease: str, load: JobLoad) -> None:
        with self._lock:
            self._leases[lease] = (self.clock() + self.ttl, load)

    def release(self, lease: str) -> None:
        with self._lock:
            self._leases.pop(lease, None)

    def wait_turn(self, job_id: int, holder: str) -> bool:
        with self._lock:
            found = self._waits.get(job_id)
            if found is not None and found[0] != holder and found[1] > self.clock():
                return False
            self._waits[job_id] = (holder, self.clock() + self.ttl)
            return True

    def done_waiting(self, job_id: int, holder: str) -> None:
        with self._lock:
            if self._waits.get(job_id, ("",))[0] == holder:
                del self._waits[job_id]

    def waiting(self, job_id: int) -> bool:
        with self._lock:
            found = self._waits.get(job_id)
            return found is not None and found[1] > self.clock()

    def held(self) -> list[JobLoad]:
        with self._lock:
            return self._live()
