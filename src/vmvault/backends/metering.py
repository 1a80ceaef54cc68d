"""Counting what reaches the store: requests by operation and by kind of object, and bytes.

An object store bills per request and caps requests per second, so the number of requests a
backup makes is a figure worth showing (the CLI's backup result has it for object-store
vaults) and worth testing (tests/integration/test_cache.py). ``CountingBackend`` sits
directly on the store, under the retry layer, so a retried attempt counts too: it is a
request the store saw.

One call is one request, except a listing: a store that pages its listings says how many
keys one answer holds (``list_page_size``: 1000 for S3's ListObjectsV2), and a listing of
``n`` keys counts as ``ceil(n / page)`` requests (at least one). A creation on a store
without conditional writes (HEAD then PUT, see backends/s3.py) counts as one.
"""

from __future__ import annotations

import builtins
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from vmvault.backends.base import Backend, Payload, Retaining, retaining

T = TypeVar("T")


def key_kind(key: str) -> str:
    """What kind of object a key names, for the counts: ``index``, ``packs``, ``config``…"""
    return key.split("/", 1)[0] or "/"


def payload_size(data: Payload) -> int:
    if isinstance(data, bytes | bytearray | memoryview):
        return len(data)
    return sum(len(p) for p in data)


class RequestCounter:
    """Requests and bytes, thread-safe; shared by every backend a ``Context`` opens."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str]] = Counter()  # (operation, key kind) -> requests
        self.bytes_in = 0  # received from the store (gets)
        self.bytes_out = 0  # sent to the store (puts)

    def add(self, op: str, key: str, requests: int = 1, *, up: int = 0) -> None:
        with self._lock:
            self._counts[(op, key_kind(key))] += requests
            self.bytes_out += up

    def received(self, n: int) -> None:
        with self._lock:
            self.bytes_in += n

    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    def ops(self) -> dict[str, int]:
        """Requests by operation (``get``, ``put``, ``create``, ``list``, ``size``…)."""
        out: Counter[str] = Counter()
        with self._lock:
            for (op, _kind), n in self._counts.items():
                out[op] += n
        return dict(sorted(out.items()))

    def count(self, op: str | None = None, kind: str | None = None) -> int:
        """Requests of one operation and/or one kind of object (``count("get", "index")``)."""
        with self._lock:
            return sum(
                n
                for (o, k), n in self._counts.items()
                if (op is None or o == op) and (kind is None or k == kind)
            )

    def by_kind(self) -> dict[str, dict[str, int]]:
        """Requests by kind of object, then operation: what the requests went to."""
        out: dict[str, dict[str, int]] = {}
        with self._lock:
            for (op, kind), n in sorted(self._counts.items()):
                out.setdefault(kind, {})[op] = n
        return out

    def to_dict(self) -> dict[str, Any]:
        """The small summary a command reports."""
        return {
            "total": self.total(),
            "ops": self.ops(),
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
        }


class CountingBackend:
    """The store, its requests counted into ``counter`` (see the module doc)."""

    def __init__(self, inner: Backend, counter: RequestCounter | None = None) -> None:
        self.inner = inner
        self.counter = counter if counter is not None else RequestCounter()
        self._page: int | None = getattr(inner, "list_page_size", None)

    def _count(self, op: str, key: str, action: Callable[[], T], *, up: int = 0) -> T:
        # Counted before the answer: a request that fails was still made (and billed).
        self.counter.add(op, key, up=up)
        return action()

    def describe(self) -> str:
        return self.inner.describe()

    def retaining(self) -> Retaining | None:
        """The store's retention capability (``base.retaining``), past this layer."""
        return retaining(self.inner)

    @property
    def parallel_writes(self) -> int:
        """The inner backend's hint (see ``base.Backend``): this layer changes nothing there."""
        return int(getattr(self.inner, "parallel_writes", 1))

    def put(self, key: str, data: Payload) -> None:
        self._count("put", key, lambda: self.inner.put(key, data), up=payload_size(data))

    def create(self, key: str, data: Payload) -> None:
        """The store's creation-only put where it has one (``base.put_new``), else a put."""
        create: Callable[[str, Payload], None] | None = getattr(self.inner, "create", None)
        if create is None:
            self.put(key, data)
            return
        self._count("create", key, lambda: create(key, data), up=payload_size(data))

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        data = self._count("get", key, lambda: self.inner.get(key, offset, length))
        self.counter.received(len(data))
        return data

    def exists(self, key: str) -> bool:
        return self._count("exists", key, lambda: self.inner.exists(key))

    def size(self, key: str) -> int:
        return self._count("size", key, lambda: self.inner.size(key))

    def modified(self, key: str) -> float:
        return self._count("modified", key, lambda: self.inner.modified(key))

    def delete(self, key: str) -> None:
        self._count("delete", key, lambda: self.inner.delete(key))

    def list(self, prefix: str = "") -> Iterator[str]:
        try:
            keys = builtins.list(self.inner.list(prefix))
        except BaseException:
            self.counter.add("list", prefix)
            raise
        pages = max(1, -(-len(keys) // self._page)) if self._page else 1
        self.counter.add("list", prefix, pages)
        return iter(keys)


def request_counter(backend: object) -> RequestCounter | None:
    """The counter of a backend chain (through its wrappers' ``inner``), None if uncounted."""
    while backend is not None:
        counter = getattr(backend, "counter", None)
        if isinstance(counter, RequestCounter):
            return counter
        backend = getattr(backend, "inner", None)
    return None
