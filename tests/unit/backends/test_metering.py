"""Counting what reaches the store (backends/metering.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from vmvault.backends.local import LocalBackend
from vmvault.backends.metering import CountingBackend, RequestCounter, request_counter
from vmvault.backends.retry import RetryingBackend
from vmvault.errors import ObjectMissing


def test_requests_by_operation_kind_and_bytes(tmp_path: Path) -> None:
    backend = CountingBackend(LocalBackend(tmp_path, fsync=False))
    backend.put("index/ab", b"12345")
    backend.create("packs/ab/cd", [b"12", b"345"])  # no create in a directory: a put
    assert backend.get("index/ab") == b"12345"
    assert backend.get("packs/ab/cd", 1, 2) == b"23"
    assert backend.exists("config") is False
    with pytest.raises(ObjectMissing):  # a failed request is still a request
        backend.get("config")
    assert sorted(backend.list("index/")) == ["index/ab"]
    backend.size("index/ab")
    backend.delete("index/ab")
    counter = backend.counter
    assert counter.ops() == {"delete": 1, "exists": 1, "get": 3, "list": 1, "put": 2, "size": 1}
    assert counter.total() == 9
    assert counter.count("get", "index") == 1 and counter.count(kind="packs") == 2
    assert counter.by_kind()["config"] == {"exists": 1, "get": 1}
    assert (counter.bytes_out, counter.bytes_in) == (10, 7)
    assert counter.to_dict() == {
        "total": 9,
        "ops": counter.ops(),
        "bytes_in": 7,
        "bytes_out": 10,
    }


class _Paged:
    """A store that answers listings a page of ``list_page_size`` keys at a time."""

    list_page_size = 2

    def __init__(self, keys: list[str]) -> None:
        self.keys = keys

    def list(self, prefix: str = "") -> Iterator[str]:
        return iter(self.keys)

    def create(self, key: str, data: bytes) -> None:
        pass


@pytest.mark.parametrize(("keys", "pages"), [(0, 1), (1, 1), (2, 1), (3, 2), (5, 3)])
def test_a_listing_counts_its_pages(keys: int, pages: int) -> None:
    backend = CountingBackend(_Paged([f"k{i}" for i in range(keys)]))  # type: ignore[arg-type]
    assert len(list(backend.list())) == keys
    assert backend.counter.count("list") == pages


def test_a_store_with_creation_only_puts_counts_creates() -> None:
    backend = CountingBackend(_Paged([]))  # type: ignore[arg-type]
    backend.create("points/p", b"x")
    assert backend.counter.ops() == {"create": 1}


def test_the_counter_is_found_through_the_wrappers(tmp_path: Path) -> None:
    shared = RequestCounter()
    chain = RetryingBackend(CountingBackend(LocalBackend(tmp_path), shared))
    assert request_counter(chain) is shared
    assert request_counter(RetryingBackend(LocalBackend(tmp_path))) is None
