"""Where a use case runs: the vault (through its backend), the catalog, the passphrase.

A ``Context`` is what every use case takes first. It opens the vault and the catalog, and
holds a vault session (a lock of the job's kind, then the index) for the length of a job.
It never prompts: a caller with a terminal gives ``ask_passphrase`` (the CLI does).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from vmvault.backends.base import Backend
from vmvault.backends.local import BackendReadOnly
from vmvault.backends.metering import RequestCounter
from vmvault.backends.url import open_backend
from vmvault.errors import PassphraseMissing
from vmvault.vault.locks import VaultLock, live_locks
from vmvault.vault.vault import Vault

if TYPE_CHECKING:
    from vmvault.catalog.store import Catalog

PASSPHRASE_ENV = "VMVAULT_PASSPHRASE"
PASSPHRASE_FILE_ENV = "VMVAULT_PASSPHRASE_FILE"
# Kinds that never write to the vault.
READ_ONLY_KINDS = ("restore", "verify", "check", "replicate", "export", "files")
# Jobs that exist to find out what the store holds: never answered from the local cache.
UNCACHED_KINDS = ("verify", "check")
log = logging.getLogger("vmvault")
# Asks a person for the passphrase (``confirm``: twice, for a new vault); None without one.
PassphrasePrompt = Callable[[bool], str]


def resolve_passphrase(
    passphrase_file: str | None = None,
    *,
    confirm: bool = False,
    ask: PassphrasePrompt | None = None,
) -> str:
    """From a key file, ``$VMVAULT_PASSPHRASE``, ``$VMVAULT_PASSPHRASE_FILE``, or ``ask``."""
    path = passphrase_file or os.environ.get(PASSPHRASE_FILE_ENV)
    if path:
        try:
            text = Path(path).read_text().rstrip("\r\n")
        except OSError as exc:
            raise PassphraseMissing(f"cannot read passphrase file {path}: {exc.strerror}") from None
        if not text:
            raise PassphraseMissing(f"passphrase file {path} is empty")
        return text
    if env := os.environ.get(PASSPHRASE_ENV):
        return env
    if ask is not None:
        return ask(confirm)
    raise PassphraseMissing(
        f"no passphrase: set {PASSPHRASE_ENV} or {PASSPHRASE_FILE_ENV}, or use --passphrase-file"
    )


@dataclass
class Context:
    """Where things are: the vault (a directory, an s3:// or an azure:// URL), the catalog's
    URL, how to get the passphrase."""

    vault_path: str
    catalog_url: str | None = None
    passphrase_file: str | None = None
    # The backend for ``vault_path`` (tests give a fault-injecting one); by default the
    # directory's or object store's backend behind the retry layer (backends/url.py).
    backend_factory: Callable[[str], Backend] | None = field(
        default=None, repr=False, compare=False
    )
    # How to ask a person (the CLI on a terminal); without it a missing passphrase fails.
    ask_passphrase: PassphrasePrompt | None = field(default=None, repr=False, compare=False)
    # A passphrase already known (a copy's own, from its variable): asked for nowhere else.
    known_passphrase: str | None = field(default=None, repr=False, compare=False)
    # The local cache of an object-store vault (backends/cache.py): False turns it off
    # (--no-cache), None leaves it to $VMVAULT_NO_CACHE.
    cache: bool | None = None
    # Every request the backends this context opens make to an object store.
    requests: RequestCounter = field(
        default_factory=RequestCounter, init=False, repr=False, compare=False
    )
    # One catalog (engine and connection pool) per context, opened on first use.
    _catalog: Catalog | None = field(default=None, init=False, repr=False, compare=False)
    _catalog_lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )

    def backend(self, *, cached: bool = True) -> Backend:
        """The vault's backend; ``cached=False``: no local cache, every read from the store."""
        if self.backend_factory is not None:
            return self.backend_factory(self.vault_path)
        cache = self.cache if cached else False
        return open_backend(self.vault_path, counter=self.requests, cache=cache)

    def open_vault(self, *, load_index: bool = True, cached: bool = True) -> Vault:
        backend = self.backend(cached=cached)
        return Vault.open(backend, self.passphrase(), load_index=load_index)

    def passphrase(self, *, confirm: bool = False) -> str:
        if self.known_passphrase is not None:
            return self.known_passphrase
        return resolve_passphrase(self.passphrase_file, confirm=confirm, ask=self.ask_passphrase)

    @contextmanager
    def session(self, kind: str, pools: Sequence[str] = ()) -> Iterator[Vault]:
        """The vault with its index, held under a lock of ``kind`` for the whole block.

        Garbage collection sweeps nothing while such a lock lives; the lock is taken before
        the index is read, so the index shows every announced collection. ``pools`` are
        the storage pools the job reads, recorded (as keyed hashes) for restore warnings.
        """
        vault = self.open_vault(load_index=False, cached=kind not in UNCACHED_KINDS)
        with ExitStack() as stack:
            try:
                stack.enter_context(
                    VaultLock(vault.backend, kind, tags=[pool_tag(vault, p) for p in pools])
                )
            except BackendReadOnly as exc:
                if kind not in READ_ONLY_KINDS:
                    raise
                # Nothing can be swept from a vault nobody can write: reading needs no lock.
                log.warning("warning: %s; reading without a lock", exc.message)
            vault.load_index()
            if kind in READ_ONLY_KINDS:
                # Packs no readable index object names still hold data a point may need.
                vault.adopt_orphan_packs(write=False)
            yield vault

    def catalog(self) -> Catalog:
        with self._catalog_lock:
            if self._catalog is None:
                # Imported here: SQLAlchemy takes ~0.3 s, which a CLI backup overlaps
                # with its work (see records.CatalogJob).
                from vmvault.catalog.store import Catalog

                self._catalog = Catalog(self.catalog_url)
            return self._catalog


def pool_tag(vault: Vault, pool: str) -> str:
    """A pool's name as lock objects carry it: a keyed hash, so locks leak no names."""
    return vault.keys.chunk_id(b"pool:" + pool.encode()).hex()[:16]


def pools_being_backed_up(vault: Vault, pools: Sequence[str]) -> list[str]:
    """Those of ``pools`` that a running backup is reading right now."""

    busy = {t for lock in live_locks(vault.backend) if lock.kind == "backup" for t in lock.tags}
    return [p for p in pools if pool_tag(vault, p) in busy]
