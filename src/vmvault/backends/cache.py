"""A local cache of the immutable objects a client of an object-store vault reads at every
start, so that a daily incremental costs a few requests instead of one per object.

What a backup reads at start (``Vault.open``, ``load_index``, the parent point) is mostly
immutable: index objects and packs are named by the BLAKE3 of their sealed bytes, manifests
by the keyed hash of their plaintext, points and ``keys/default`` are written once. Copies
of those are kept under ``<root>/<vault id>/<key>``; everything else (``config``,
``settings``, ``protection/``, ``gc/pending``, ``locks/``, ``damaged/``, every listing, and
every ``exists``/``size``/``modified``) always goes to the store.

Which copy may be used, and why that is safe:

- The cache of a vault is chosen by the vault id in ``config``, and ``config`` is read from
  the store at every start: a location re-initialised as another vault, or a second vault
  behind another URL, never meets another vault's copies.
- ``index/…`` and ``points/…``: used only for keys the store listed in this process (the
  vault lists them before reading them anyway: one LIST for all of them); a copy of a key
  the listing lacks is deleted.
- ``manifests/…`` and ``keys/default``: named by their content or written once per vault.
  A manifest the store has lost is still read from here, which a backup may do (its content
  is right); ``check`` and ``verify`` bypass the cache to see what the store holds.
- ``packs/…``: only whole record packs, and only those the vault asks to ``hold`` (it does
  so for packs of block records it is about to read, when the pack is present in the
  store's listing) or to ``remember`` (a record pack it has just written). A backup then
  reads its parent's block records from here instead of one ranged GET per block.

Every entry is ``MAGIC | BLAKE3(payload) | payload``, the payload being the object exactly
as stored (ciphertext, except ``keys/default``, which is plaintext KDF parameters and sealed
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
import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import blake3

from vmvault.backends.base import Backend, Payload, Retaining, retaining, validate_key
from vmvault.errors import UsageError, VmvaultError

CACHE_DIR_ENV = "VMVAULT_CACHE_DIR"
NO_CACHE_ENV = "VMVAULT_NO_CACHE"
CACHE_LIMIT_ENV = "VMVAULT_CACHE_LIMIT"
DEFAULT_LIMIT = 1 << 30
MAGIC = b"VMVC\x01"
DIGEST = 32
HEADER = len(MAGIC) + DIGEST
TMP_PREFIX = ".tmp-"
LOCATION_FILE = ".location"  # where a vault's copies came from, for `vmvault vault cache`
STALE_TMP = 3600.0  # a temporary file this old is a crashed writer's: removed on the next scan
LOW_WATER = 0.9  # eviction frees down to this share of the limit, so it does not run per write
VAULT_ID = re.compile(r"^[0-9a-f]{32}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
CONFIG_KEY = "config"
KEYS_KEY = "keys/default"
LISTED = ("index/", "points/")  # copies used only for keys the store listed in this process
log = logging.getLogger("vmvault")


# -- settings ---------------------------------------------------------------------------


def cache_root() -> Path:
    """``$VMVAULT_CACHE_DIR``, else ``$XDG_CACHE_HOME/vmvault``, else ``~/.cache/vmvault``."""
    if chosen := os.environ.get(CACHE_DIR_ENV):
        return Path(chosen).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"  # the spec: absolute only
    return base / "vmvault"


def cache_enabled() -> bool:
    """False when ``$VMVAULT_NO_CACHE`` is set to anything but ``0``/``false``/``no``."""
    return os.environ.get(NO_CACHE_ENV, "").strip().lower() in ("", "0", "false", "no")


def parse_size(text: str) -> int:
    """``1073741824``, ``512M``, ``2G``, ``1.5GiB`` as bytes (binary units)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text.lower())
    if match is None:
        raise UsageError(f"{CACHE_LIMIT_ENV}: {text!r} is not a size (such as 512M or 2G)")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def cache_limit() -> int:
    text = os.environ.get(CACHE_LIMIT_ENV)
    return DEFAULT_LIMIT if not text else parse_size(text)


# -- the files ----------------------------------------------------------------------------


@dataclass(frozen=True)
class VaultUsage:
    vault_id: str
    location: str | None
    entries: int
    size: int


def _digest(parts: Iterable[bytes | bytearray | memoryview]) -> bytes:
    hasher = blake3.blake3()
    for part in parts:
        hasher.update(part)
    return hasher.digest()


def name_digest(key: str) -> bytes | None:
    """The BLAKE3 an index object's or a pack's name states, None for other keys."""
    kind, _, rest = key.partition("/")
    name = rest.rsplit("/", 1)[-1]
    if kind in ("index", "packs") and _HEX64.match(name):
        return bytes.fromhex(name)
    return None


class ObjectCache:
    """The cache's files: ``<root>/<vault id>/<key>``, bounded to ``limit`` bytes.

    Any failure of the local file system (full, read-only, removed under us) makes a read a
    miss and a write a no-op: the store is always there to fall back on."""

    def __init__(self, root: Path, limit: int = DEFAULT_LIMIT) -> None:
        self.root = Path(root).absolute()
        self.limit = limit
        self._lock = threading.Lock()
        self._usable: bool | None = None
        self._usage: int | None = None  # bytes of entries, counted at the last scan plus writes
        self._touched: set[Path] = set()

    @property
    def max_entry(self) -> int:
        """No single copy may take more than a quarter of the bound."""
        return self.limit // 4

    def usable(self) -> bool:
        """Whether the root can be used: made if missing (mode 0700), ours, not open to others.

        A root owned by another user is refused: its copies could have been put there by
        them (they could not forge an object the vault accepts, but could waste requests)."""
        if self._usable is None:
            try:
                self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
                info = self.root.stat()
                if info.st_uid != os.getuid():
                    raise PermissionError(f"{self.root} belongs to another user")
                if stat.S_IMODE(info.st_mode) & 0o077:
                    os.chmod(self.root, 0o700)  # ours: readable by us only
                self._usable = True
            except OSError as exc:
                log.warning("warning: local cache disabled: %s", exc)
                self._usable = False
        return self._usable

    def _vault_dir(self, vault_id: str) -> Path:
        if not VAULT_ID.match(vault_id):  # a directory name: nothing but 32 hex digits
            raise ValueError(f"not a vault id: {vault_id!r}")
        return self.root / vault_id

    def _path(self, vault_id: str, key: str) -> Path:
        return self._vault_dir(vault_id).joinpath(*validate_key(key).split("/"))

    def _makedirs(self, directory: Path) -> None:
        """Every level below the root with mode 0700 (``mkdir(parents=True)`` would give the
        levels above the last the umask's mode)."""
        missing = []
        while directory != self.root and not directory.is_dir():
            missing.append(directory)
            directory = directory.parent
        for folder in reversed(missing):
            with contextlib.suppress(FileExistsError):
                folder.mkdir(mode=0o700)

    def _touch(self, path: Path) -> None:
        """Mark a copy used (its mtime: the LRU order), once per process and copy."""
        if path in self._touched:
            return
        with contextlib.suppress(OSError):
            os.utime(path)
        self._touched.add(path)

    def _discard(self, path: Path, why: str) -> None:
        log.debug("local cache: dropping %s: %s", path, why)
        with contextlib.suppress(OSError):
            path.unlink()
        self._touched.discard(path)

    # -- reading ------------------------------------------------------------------------

    def read(self, vault_id: str, key: str) -> bytes | None:
        """The stored object, if a copy exists and is intact; a damaged copy is deleted."""
        path = self._path(vault_id, key)
        try:
            raw = path.read_bytes()
        except OSError:
            return None
        payload = memoryview(raw)[HEADER:]
        stated = raw[len(MAGIC) : HEADER]
        named = name_digest(key)
        if (
            len(raw) < HEADER
            or not raw.startswith(MAGIC)
            or _digest([payload]) != stated
            or (named is not None and stated != named)
        ):
            self._discard(path, "checksum mismatch")
            return None
        self._touch(path)
        return bytes(payload)

    def verify(self, vault_id: str, key: str) -> bool:
        """Whether a copy exists and is intact (read in pieces: a pack may be tens of MiB)."""
        path = self._path(vault_id, key)
        try:
            with open(path, "rb") as f:
                header = f.read(HEADER)
                hasher = blake3.blake3()
                while piece := f.read(1 << 20):
                    hasher.update(piece)
        except OSError:
            return False
        named = name_digest(key)
        stated = header[len(MAGIC) :]
        if (
            len(header) < HEADER
            or not header.startswith(MAGIC)
            or hasher.digest() != stated
            or (named is not None and stated != named)
        ):
            self._discard(path, "checksum mismatch")
            return False
        self._touch(path)
        return True

    def read_range(self, vault_id: str, key: str, offset: int, length: int) -> bytes | None:
        """A range of a copy that ``verify`` passed in this process; None if it is gone or
        shorter than asked (then deleted)."""
        path = self._path(vault_id, key)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        try:
            data = os.pread(fd, length, HEADER + offset)
        except OSError:
            return None
        finally:
            os.close(fd)
        if len(data) != length:
            self._discard(path, "shorter than the range asked")
            return None
        return data

    # -- writing ------------------------------------------------------------------------

    def write(
        self,
        vault_id: str,
        key: str,
        parts: Sequence[bytes | bytearray | memoryview],
        digest: bytes | None = None,
    ) -> bool:
        """Keep a copy of an object (in parts, in order); ``digest``: its BLAKE3, if known.

        Written to a temporary name and renamed: a reader never sees half a copy."""
        size = sum(len(p) for p in parts)
        if size > self.max_entry or not self.usable():
            return False
        path = self._path(vault_id, key)
        tmp = path.parent / f"{TMP_PREFIX}{path.name}.{secrets.token_hex(6)}"
        try:
            self._makedirs(path.parent)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(MAGIC + (digest or _digest(parts)))
                for part in parts:
                    f.write(part)
            os.replace(tmp, path)
        except OSError as exc:
            log.debug("local cache: cannot keep %s: %s", key, exc)
            with contextlib.suppress(OSError):
                tmp.unlink()
            return False
        self._touched.add(path)  # just written: the newest already
        with self._lock:
            if self._usage is not None:
                self._usage += HEADER + size
            over = self._usage is None or self._usage > self.limit
        if over:
            self.evict()
        return True

    def drop(self, vault_id: str, key: str) -> bool:
        """Delete a copy; whether there was one."""
        path = self._path(vault_id, key)
        try:
            path.unlink()
        except OSError:
            return False
        self._touched.discard(path)
        return True

    def prune(self, vault_id: str, prefix: str, listed: frozenset[str]) -> None:
        """Delete the copies under ``prefix`` of keys the store no longer lists."""
        folder = self._vault_dir(vault_id) / prefix.rstrip("/")
        for path, _info in self._files(folder):
            key = path.relative_to(self._vault_dir(vault_id)).as_posix()
            if key not in listed:
                self._discard(path, "no longer listed by the store")

    def set_location(self, vault_id: str, where: str) -> None:
        """Note where this vault's copies come from (shown by ``vmvault vault cache``)."""
        if not self.usable():
            return
        path = self._vault_dir(vault_id) / LOCATION_FILE
        with contextlib.suppress(OSError):
            if path.is_file() and path.read_text() == where:
                return
            self._makedirs(path.parent)
            tmp = path.with_name(f"{TMP_PREFIX}location.{secrets.token_hex(6)}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(where)
            os.replace(tmp, path)

    # -- the bound ----------------------------------------------------------------------

    def _files(self, folder: Path) -> Iterator[tuple[Path, os.stat_result]]:
        """The copies under ``folder`` (not the temporary files, which a stale one is
        removed, nor the location notes)."""
        now = time.time()
        for dirpath, _dirs, names in os.walk(folder):
            for name in names:
                path = Path(dirpath) / name
                try:
                    info = path.lstat()
                except OSError:
                    continue
                if name.startswith(TMP_PREFIX):
                    if now - info.st_mtime > STALE_TMP:
                        with contextlib.suppress(OSError):
                            path.unlink()
                    continue
                if not name.startswith(".") and stat.S_ISREG(info.st_mode):
                    yield path, info

    def _vault_ids(self) -> list[str]:
        try:
            return sorted(p.name for p in self.root.iterdir() if VAULT_ID.match(p.name))
        except OSError:
            return []

    def evict(self) -> None:
        """Delete the least recently used copies until the cache is within its bound."""
        with self._lock:
            found = [
                (info.st_mtime, info.st_size, path)
                for vault_id in self._vault_ids()
                for path, info in self._files(self.root / vault_id)
            ]
            total = sum(size for _, size, _ in found)
            if total > self.limit:
                for _mtime, size, path in sorted(found):
                    if total <= self.limit * LOW_WATER:
                        break
                    self._discard(path, "least recently used (over the size bound)")
                    total -= size
            self._usage = total

    def usage(self, vault_ids: Iterable[str] | None = None) -> list[VaultUsage]:
        """Copies and bytes per vault (all vaults, or those named)."""
        chosen = self._vault_ids() if vault_ids is None else sorted(vault_ids)
        out = []
        for vault_id in chosen:
            folder = self._vault_dir(vault_id)
            files = [info.st_size for _path, info in self._files(folder)]
            try:
                location: str | None = (folder / LOCATION_FILE).read_text()
            except OSError:
                location = None
            out.append(VaultUsage(vault_id, location, len(files), sum(files)))
        return out

    def clear(self, vault_ids: Iterable[str] | None = None) -> tuple[int, int]:
        """Delete the copies of the vaults named (all by default); (copies, bytes) deleted."""
        gone = self.usage(vault_ids)
        for entry in gone:
            shutil.rmtree(self._vault_dir(entry.vault_id), ignore_errors=True)
        with self._lock:
            self._usage = None
            self._touched.clear()
        return sum(e.entries for e in gone), sum(e.size for e in gone)


# -- the backend --------------------------------------------------------------------------


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
        return key == KEYS_KEY or key.startswith("manifests/")

    def _keep(self, key: str, data: Payload) -> None:
        """Keep a copy of an object just read from or written to the store, if it is one
        worth keeping: an intact index object, a point, a manifest, ``keys/default``."""
        vault_id = self.vault_id
        if vault_id is None:
            return
        parts = _joined(data)
        named = name_digest(key)
        if key.startswith("index/"):
            if named is None or _digest(parts) != named:
                return  # a damaged index object is not kept
        elif not (key == KEYS_KEY or key.startswith(("points/", "manifests/"))):
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

    def list_leftovers(self) -> builtins.list[str]:
        leftovers: Callable[[], builtins.list[str]] | None = getattr(
            self.inner, "list_leftovers", None
        )
        return leftovers() if leftovers is not None else []

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
            if _digest([data]) != named or not self.cache.write(vault_id, key, [data], named):
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
