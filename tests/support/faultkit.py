"""A backend that fails the way real storage fails, on purpose and seeded: for tests.

``FaultyBackend(inner, seed, rates)`` wraps any backend and, per call, injects:

- transient errors (``TransientBackendError``), *before* or *after* the call took effect
  (a put that stored the object, a delete that removed it, then the answer was lost);
- timeouts (``TimeoutError`` after a short stall), before or after the effect;
- slow calls (a stall of 1-5 ms, then the call);
- torn writes: a put that leaves a prefix of the object under its final name, then fails
  with a transient error or ENOSPC: what a store without atomic puts could leave;
- ENOSPC on put (``OSError``, before anything is written), as an unmapped store raises it;
- listings broken half-way (some keys, then a transient error);
- objects vanishing between list and read: the listing names one more key, of an object
  deleted right after the listing (by a collection, a prune, a released lock elsewhere);
  reading it raises ``ObjectMissing``, ``exists`` says no, deleting it is a no-op.

Torn writes hit only objects under ``torn_prefixes`` (packs, index objects, manifests,
points: new, uniquely named objects that points reference). The few objects vmvault
rewrites in place (settings, protection records, lock heartbeats, ``gc/pending``) rely on
the Backend contract that a put is atomic; tests/test_backend_faults.py proves the local
backend keeps it.

``inject(op, prefix, fault)`` scripts a fault for the next matching call(s), for tests
that need one exact failure. Faults are drawn from one seeded stream; threads make the
order of draws vary a little between runs, the rates and the stream stay the seed's.
"""

from __future__ import annotations

import builtins
import errno
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from vmvault.backends.base import Backend, Payload, TransientBackendError
from vmvault.errors import ObjectMissing

TORN_PREFIXES = ("packs/", "index/", "manifests/", "points/")
_FAULTS = frozenset(
    {
        "slow",
        "transient",
        "transient-after",
        "timeout",
        "timeout-after",
        "torn",
        "torn-full",
        "enospc",
        "break",
        "vanish",
    }
)


@dataclass(frozen=True)
class FaultRates:
    """Probability per call of each fault (each drawn on its own)."""

    transient: float = 0.0
    timeout: float = 0.0
    slow: float = 0.0
    torn: float = 0.0  # of a put under a torn prefix (then a transient error)
    enospc: float = 0.0  # of a put (under a torn prefix, half of them after a prefix)
    vanish: float = 0.0  # of a listing with at least one key


@dataclass
class _Rule:
    op: str
    prefix: str
    fault: str
    skip: int
    times: int


class FaultyBackend:
    def __init__(
        self,
        inner: Backend,
        seed: int,
        rates: FaultRates | None = None,
        *,
        torn_prefixes: tuple[str, ...] = TORN_PREFIXES,
    ) -> None:
        self.inner = inner
        self.seed = seed
        self.rates = rates or FaultRates()
        self.torn_prefixes = torn_prefixes
        self.injected: Counter[str] = Counter()  # fault -> how many were injected
        self.calls: Counter[str] = Counter()  # op -> how many calls
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._rules: list[_Rule] = []
        self._ghosts: set[str] = set()

    # -- scripting --------------------------------------------------------------------------

    def inject(self, op: str, prefix: str, fault: str, *, skip: int = 0, times: int = 1) -> None:
        """Fail the matching calls ``skip + 1`` to ``skip + times`` of ``op`` under ``prefix``."""
        assert fault in _FAULTS, fault
        with self._lock:
            self._rules.append(_Rule(op, prefix, fault, skip, times))

    def _draw(self, op: str, key: str, choices: list[tuple[str, float]]) -> str | None:
        """This call's fault: a scripted one if a rule matches, else drawn at the rates."""
        with self._lock:
            self.calls[op] += 1
            for rule in self._rules:
                if rule.op == op and key.startswith(rule.prefix) and rule.times > 0:
                    if rule.skip > 0:
                        rule.skip -= 1
                        return None
                    rule.times -= 1
                    self.injected[rule.fault] += 1
                    return rule.fault
            for fault, rate in choices:
                if rate and self._rng.random() < rate:
                    if fault in ("transient", "timeout") and self._rng.random() < 0.5:
                        fault += "-after"  # the effect happened, the answer was lost
                    elif (
                        fault == "enospc"
                        and key.startswith(self.torn_prefixes)
                        and self._rng.random() < 0.5
                    ):
                        fault = "torn-full"  # the disk filled up half-way through
                    self.injected[fault] += 1
                    return fault
            return None

    def _uniform(self, low: float, high: float) -> float:
        with self._lock:
            return self._rng.uniform(low, high)

    def _randrange(self, stop: int) -> int:
        with self._lock:
            return self._rng.randrange(stop) if stop > 0 else 0

    def _choices(self, op: str, key: str = "") -> list[tuple[str, float]]:
        r = self.rates
        found = [("slow", r.slow), ("transient", r.transient), ("timeout", r.timeout)]
        if op == "put":
            torn = r.torn if key.startswith(self.torn_prefixes) else 0.0
            found += [("torn", torn), ("enospc", r.enospc)]
        return found

    def _before(self, op: str, key: str, fault: str | None) -> None:
        """Faults that strike before the call reaches the store."""
        if fault == "slow":
            time.sleep(self._uniform(0.001, 0.005))
        elif fault == "transient":
            raise TransientBackendError(f"{op} {key}: 503 service unavailable (injected)")
        elif fault == "timeout":
            time.sleep(0.002)
            raise TimeoutError(f"{op} {key} timed out (injected)")
        elif fault == "enospc":
            raise OSError(errno.ENOSPC, "No space left on device (injected)")

    def _after(self, op: str, key: str, fault: str | None) -> None:
        """Faults that strike after the store did the work: the answer is lost."""
        if fault == "transient-after":
            raise TransientBackendError(f"{op} {key}: connection reset (injected, after)")
        if fault == "timeout-after":
            raise TimeoutError(f"{op} {key} timed out (injected, after)")

    def _missing(self, key: str) -> ObjectMissing:
        return ObjectMissing(f"object {key} is missing (deleted since it was listed)")

    # -- the Backend protocol ---------------------------------------------------------------

    def describe(self) -> str:
        return self.inner.describe()

    def put(self, key: str, data: Payload) -> None:
        fault = self._draw("put", key, self._choices("put", key))
        self._before("put", key, fault)
        if fault in ("torn", "torn-full"):
            whole = (
                bytes(data) if isinstance(data, bytes | bytearray | memoryview) else b"".join(data)
            )
            self.inner.put(key, whole[: self._randrange(len(whole))])  # a strict prefix
            if fault == "torn-full":
                raise OSError(errno.ENOSPC, "No space left on device (injected, torn)")
            raise TransientBackendError(f"put {key}: connection reset mid-upload (injected)")
        self.inner.put(key, data)
        with self._lock:
            self._ghosts.discard(key)
        self._after("put", key, fault)

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        fault = self._draw("get", key, self._choices("get"))
        self._before("get", key, fault)
        if key in self._ghosts:
            raise self._missing(key)
        return self.inner.get(key, offset, length)

    def exists(self, key: str) -> bool:
        fault = self._draw("exists", key, self._choices("exists"))
        self._before("exists", key, fault)
        return key not in self._ghosts and self.inner.exists(key)

    def size(self, key: str) -> int:
        fault = self._draw("size", key, self._choices("size"))
        self._before("size", key, fault)
        if key in self._ghosts:
            raise self._missing(key)
        return self.inner.size(key)

    def modified(self, key: str) -> float:
        fault = self._draw("modified", key, self._choices("modified"))
        self._before("modified", key, fault)
        if key in self._ghosts:
            raise self._missing(key)
        return self.inner.modified(key)

    def delete(self, key: str) -> None:
        fault = self._draw("delete", key, self._choices("delete"))
        self._before("delete", key, fault)
        self.inner.delete(key)
        self._after("delete", key, fault)

    def list(self, prefix: str = "") -> Iterator[str]:
        r = self.rates
        choices = [("slow", r.slow), ("transient", r.transient), ("break", r.transient)]
        choices += [("timeout", r.timeout), ("vanish", r.vanish)]
        fault = self._draw("list", prefix, choices)
        if fault in ("transient-after", "timeout-after"):
            fault = fault.removesuffix("-after")  # a listing changes nothing
        self._before("list", prefix, fault)
        keys = builtins.list(self.inner.list(prefix))
        if fault == "break":
            return self._broken(prefix, keys[: self._randrange(len(keys) + 1)])
        if fault == "vanish" and keys:
            keys.insert(self._randrange(len(keys) + 1), self._ghost(keys))
        return iter(keys)

    def _broken(self, prefix: str, first: builtins.list[str]) -> Iterator[str]:
        yield from first
        raise TransientBackendError(f"list {prefix or '/'}: next page failed (injected)")

    def _ghost(self, keys: builtins.list[str]) -> str:
        """A key shaped like the listed ones, of an object deleted since the listing."""
        model = keys[self._randrange(len(keys))]
        taken = set(keys)
        while True:
            tail = "".join("0123456789abcdef"[self._randrange(16)] for _ in range(4))
            ghost = model[:-4] + tail
            if ghost not in taken:
                with self._lock:
                    self._ghosts.add(ghost)
                return ghost

    def list_leftovers(self) -> builtins.list[str]:
        leftovers = getattr(self.inner, "list_leftovers", None)
        return leftovers() if leftovers is not None else []
