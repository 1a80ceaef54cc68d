"""A local cache of the immutable objects a client of an object-store vault reads at every
start, so that a daily incremental costs a few requests instead of one per object.

What a backup reads at start (``Vault.open``, ``load_index``, the parent point) is mostly
immutable: index objects and packs are named by the BLAKE3 of their sealed bytes, manifests
by the keyed hash of their plaintext, points and key slots (``keys/…``) are written once.
Copies of those are kept under ``<root>/<vault id>/<key>``; everything else (``config``,
``settings``, ``protection/``, ``gc/pending``, ``locks/``, ``damaged/``, every listing, and
every ``exists``/``size``/``modified``) always goes to the store.

Which copy may be used, and why that is safe:

- The cache of a vault is chosen by the vault id in ``config``, and ``config`` is read from
  the store at every start: a location re-initialised as another vault, or a second vault
  behind another URL, never meets another vault's copies.
- ``index/…``, ``points/…`` and ``keys/…``: used only for keys the store listed in this
  process (the vault lists them before reading them anyway: one LIST for all of them); a
  copy of a key the listing lacks is deleted (a removed key slot never opens the vault).
- ``manifests/…``: named by their content.
  A manifest the store has lost is still read from here, which a backup may do (its content
  is right); ``check`` and ``verify`` bypass the cache to see what the store holds.
- ``packs/…``: only whole record packs, and only those the vault asks to ``hold`` (it does
  so for packs of block records it is about to read, when the pack is present in the
  store's listing) or to ``remember`` (a record pack it has just written). A backup then
  reads its parent's block records from here instead of one ranged GET per block.

Every entry is ``MAGIC | BLAKE3(payload) | payload``, the payload being the object exactly
as stored (ciphertext, except key slots, which are plaintext KDF parameters and sealed
keys, as in the store). A copy whose checksum (or, for index objects and packs, whose name)
does not match is deleted and the store is read instead, so a damaged cache costs requests,
never a wrong read; the vault authenticates everything anyway (AES-GCM, keyed hashes) and
re-reads from the store an object whose cached copy does not open (``uncache``).

Entries are written to a temporary name and renamed (no fsync: a copy torn by a crash fails
its checksum), in directories of mode 0700 and files of mode 0600, and the cache keeps to a
size bound (1 GiB by default) by deleting the least recently used entries (their mtime,
touched on use: atime is often not kept). No request is ever made on the cache's behalf
except a ``hold``'s one GET of a whole record pack.
"""

from __future__ import annotations

import builtins
import json
import logging
import threading
from collections.abc import Callable, Iterator

from vmvault.backends.base import Backend, Payload, Retaining, retaining
from vmvault.backends.cache_files import (
    CACHE_DIR_ENV,
    CACHE_LIMIT_ENV,
    CONFIG_KEY,
    HEADER,
    LISTED,
    NO_CACHE_ENV,
    VAULT_ID,
    ObjectCache,
    VaultUsage,
    cache_enabled,
    cache_limit,
    cache_root,
    checksum,
    name_digest,
    parse_size,
)
from vmvault.errors import VmvaultError

log = logging.getLogger("vmvault")

__all__ = [
    "CACHE_DIR_ENV",
    "CACHE_LIMIT_ENV",
    "CONFIG_KEY",
    "HEADER",
    "LISTED",
    "NO_CACHE_ENV",
    "CachingBackend",
    "ObjectCache",
    "VaultUsage",
    "cache_enabled",
    "cache_limit",
    "cache_root",
    "name_digest",
    "parse_size",
    "with_cache",
]


def _joined(data: Payload) -> list[bytes | bytearray | memoryview]:
    if isinstance(data, bytes | bytearray | memoryview):
        return [data]
    return list(data)


class CachingBackend:
    """A backend that keeps copies of immutable objects in an ``ObjectCache`` (module doc).

    Thread-safe: a backup's workers read block records through it at the same time; a pack
    being fetched whole by one thread is waited for by the others, not fetched again."""

    def __init__(self, inner: Backend, cache: ObjectCache) -> None:
        self.inner = inner
        self.cache = cache
        self.vault_id: str | None = None  # from the last ``config`` read or written
        self._listed: dict[str, frozenset[str]] = {}
        self._held: set[str] = set()  # packs whose copy was verified in this process
        self._refused: set[str] = set()  # packs that could not be kept: read from the store
        self._from_cache: set[str] = set()  # keys whose last read was a cached copy
        self._lock = threading.Lock()
        self._pack_locks: dict[str, threading.Lock] = {}

    def describe(self) -> str:
        return self.inner.describe()

    def retaining(self) -> Retaining | None:
        """The store's retention capability (``base.retaining``), past this layer."""
        return retaining(self.inner)

    @property
    def parallel_writes(self) -> int:
        """The inner backend's hint (see ``base.Backend``): this layer changes nothing there."""
        return int(getattr(self.inner, "parallel_writes", 1))

    # -- which copies -------------------------------------------------------------------

    def _bind(self, config: bytes) -> None:
        """Use the copies of the vault whose ``config`` the store just gave (or was given)."""
        try:
            vault_id = json.loads(config).get("vault_id")
        except (ValueError, AttributeError, RecursionError):
            vault_id = None
        if not (isinstance(vault_id, str) and VAULT_ID.match(vault_id) and self.cache.usable()):
            vault_id = None
        with self._lock:
            if vault_id != self.vault_id:
                self.vault_id = vault_id
                self._listed.clear()
                self._held.clear()
                self._refused.clear()
                self._from_cache.clear()
        if vault_id is not None:
            self.cache.set_location(vault_id, self.inner.describe())

    def _servable(self, key: str) -> bool:
        """Whether a copy of ``key`` may answer a read now (see the module doc)."""
        for prefix in LISTED:
            if key.startswith(prefix):
                return key in self._listed.get(prefix, ())
        return key.startswith("manifests/")

    def _keep(self, key: str, data: Payload) -> None:
        """Keep a copy of an object just read from or written to the store, if it is one
        worth keeping: an intact index object, a point, a manifest, a key slot."""
        vault_id = self.vault_id
        if vault_id is None:
            return
        parts = _joined(data)
        named = name_digest(key)
        if key.startswith("index/"):
            if named is None or checksum(parts) != named:
                return  # a damaged index object is not kept
        elif not key.startswith(("points/", "manifests/", "keys/")):
            return
        self.cache.write(vault_id, key, parts, named)

    # -- the Backend protocol -----------------------------------------------------------

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        vault_id = self.vault_id
        whole = offset == 0 and length is None
        if vault_id is not None:
            cached: bytes | None = None
            if key in self._held and length is not None:
                cached = self.cache.read_range(vault_id, key, offset, length)
                if cached is None:
                    self._held.discard(key)  # gone or damaged: the store from now on
            elif whole and self._servable(key):
                cached = self.cache.read(vault_id, key)
            if cached is not None:
                self._from_cache.add(key)
                return cached
        data = self.inner.get(key, offset, length)
        self._from_cache.discard(key)
        if key == CONFIG_KEY and whole:
            self._bind(data)
        elif whole:
            self._keep(key, data)
        return data

    def put(self, key: str, data: Payload) -> None:
        self.inner.put(key, data)
        if key == CONFIG_KEY:
            self._bind(b"".join(_joined(data)))
        else:
            self._keep(key, data)

    def create(self, key: str, data: Payload) -> None:
        """A creation-only put (``base.put_new``): the store's own where it has one."""
        create: Callable[[str, Payload], None] = getattr(self.inner, "create", None) or (
            self.inner.put
        )
        create(key, data)
        self._keep(key, data)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)  # a question about the store: never from a copy

    def size(self, key: str) -> int:
        return self.inner.size(key)

    def modified(self, key: str) -> float:
        return self.inner.modified(key)

    def list(self, prefix: str = "") -> Iterator[str]:
        keys = builtins.list(self.inner.list(prefix))
        vault_id = self.vault_id
        if prefix in LISTED and vault_id is not None:
            listed = frozenset(keys)
            self._listed[prefix] = listed
            self.cache.prune(vault_id, prefix, listed)
        return iter(keys)

    def delete(self, key: str) -> None:
        self.inner.delete(key)
        if self.vault_id is not None:
            self.cache.drop(self.vault_id, key)
        self._held.discard(key)

    # -- what the vault asks of a cache -------------------------------------------------

    def _pack_lock(self, key: str) -> threading.Lock:
        with self._lock:
            return self._pack_locks.setdefault(key, threading.Lock())

    def hold(self, key: str, size_bound: int) -> bool:
        """Keep a whole pack here, so its ranges are read from the copy (the vault asks this
        for record packs it reads block records from); whether it is held.

        Costs one GET of the whole pack the first time (``size_bound``: what it can be at
        most, so a pack the bound could not keep is not fetched for nothing), none after.
        Never fails: a pack that cannot be kept is read by ranges from the store, as
        without a cache; the read of the range reports what is wrong with it."""
        vault_id = self.vault_id
        named = name_digest(key)
        if vault_id is None or named is None or not key.startswith("packs/"):
            return False
        if key in self._held:
            return True
        if key in self._refused or not self.cache.usable():
            return False
        with self._pack_lock(key):
            if key in self._held:
                return True
            if key in self._refused:
                return False
            if self.cache.verify(vault_id, key):  # kept earlier (``remember``): no request
                self._held.add(key)
                return True
            if size_bound > self.cache.max_entry:  # could not be kept: not fetched for that
                self._refused.add(key)
                return False
            try:
                data = self.inner.get(key)
            except (VmvaultError, OSError) as exc:
                log.debug("local cache: cannot hold %s: %s", key, exc)
                self._refused.add(key)
                return False
            # A pack whose bytes are not its name is damaged in the store: not kept; the
            # ranged reads find (and report) what the vault needs of it.
            if checksum([data]) != named or not self.cache.write(vault_id, key, [data], named):
                self._refused.add(key)
                return False
            self._held.add(key)
            return True

    def remember(self, key: str, data: Payload) -> None:
        """Keep a copy of a pack the vault has just written whole to the store (a record
        pack, which the next backup reads); the store confirmed it, its name is its BLAKE3."""
        vault_id, named = self.vault_id, name_digest(key)
        if vault_id is not None and named is not None and key.startswith("packs/"):
            self.cache.write(vault_id, key, _joined(data), named)

    def uncache(self, key: str) -> bool:
        """Drop the copy of an object the vault could not open; whether its last read came
        from the cache (then the vault reads the store's instead)."""
        from_cache = key in self._from_cache
        self._from_cache.discard(key)
        if self.vault_id is not None:
            self.cache.drop(self.vault_id, key)
        return from_cache


def with_cache(backend: Backend, enabled: bool | None = None) -> Backend:
    """``backend`` behind a ``CachingBackend`` (``enabled`` None: unless ``$VMVAULT_NO_CACHE``)."""
    if enabled is None:
        enabled = cache_enabled()
    if not enabled:
        return backend
    return CachingBackend(backend, ObjectCache(cache_root(), cache_limit()))
