"""The interface every vault backend implements: immutable objects by key, nothing more.

Keys are ``/``-separated relative names such as ``packs/ab/ab12...``. A backend knows nothing
of packs, chunks or VMs; it stores bytes durably and atomically: after ``put`` returns, the
object is complete and survives a crash, and a reader never sees half of it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Protocol

from vmvault.errors import UsageError

_KEY_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def validate_key(key: str) -> str:
    """Refuse keys that could name something outside the vault (``..``, absolute paths)."""
    parts = key.split("/")
    if not key or any(not _KEY_PART.match(p) or p in (".", "..") for p in parts):
        raise UsageError(f"invalid object key {key!r}")
    return key


Payload = bytes | bytearray | memoryview | Sequence[bytes]  # one buffer, or parts in order


class Backend(Protocol):
    """Immutable-object storage. Implementations must be safe to call from many threads."""

    def put(self, key: str, data: Payload) -> None:
        """Store ``data`` under ``key`` atomically and durably (replacing nothing half-way)."""

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        """Return the object's bytes (or a range); raise ObjectMissing if absent."""

    def exists(self, key: str) -> bool:
        """Whether the object exists."""

    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys under ``prefix`` (a directory-like prefix ending in ``/``, or empty)."""

    def delete(self, key: str) -> None:
        """Remove the object; deleting a missing object is not an error."""

    def size(self, key: str) -> int:
        """The object's size in bytes."""

    def modified(self, key: str) -> float:
        """When the object was written (seconds since the epoch)."""

    def describe(self) -> str:
        """Where the objects live, for messages (never contains secrets)."""
