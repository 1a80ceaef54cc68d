"""What a running server holds: where the vault, catalog and inventory are, the opened vault,
and the background loops (scheduler, worker, alert delivery) of the one-process mode."""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from vmvault import service
from vmvault.errors import Conflict, VmvaultError

if TYPE_CHECKING:
    from vmvault.catalog.store import Catalog
    from vmvault.inventory import Inventory
    from vmvault.jobs.queue import JobQueue
    from vmvault.server.accounts import Accounts
    from vmvault.vault.vault import Vault

log = logging.getLogger("vmvault.server")
ALERT_EVERY = 2.0  # seconds between looks for undelivered alerts


@dataclass
class ServerConfig:
    vault: str
    catalog_url: str | None = None
    passphrase_file: str | None = None
    inventory: str | None = None
    # API restores write new VMs only below this directory, under names the API checks.
    restore_root: str | None = None
    scheduler: bool = True  # queue scheduled backups and maintenance
    worker: bool = True  # run queued jobs in this process
    alerts: bool = True  # deliver alerts (raised by any process) to webhooks and SMTP
    tick_seconds: float = 30.0
    secure_cookies: bool = False  # set when serving TLS


@dataclass
class ServerState:
    config: ServerConfig
    ctx: service.Context = field(init=False)
    vault: Vault = field(init=False)
    catalog: Catalog = field(init=False)
    accounts: Accounts = field(init=False)
    queue: JobQueue = field(init=False)
    _inventory: Inventory | None = field(default=None, init=False)
    _inventory_mtime: float = field(default=-1.0, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _points: dict[str, dict[str, Any]] = field(default_factory=dict, init=False)
    _points_lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _damaged: dict[str, str] = field(default_factory=dict, init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _threads: list[threading.Thread] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        from vmvault.jobs.queue import JobQueue
        from vmvault.server.accounts import Accounts

        c = self.config
        self.ctx = service.Context(c.vault, c.catalog_url, c.passphrase_file)
        self.vault = self.ctx.open_vault(load_index=False)  # fails early on a bad passphrase
        self.catalog = self.ctx.catalog()
        self.accounts = Accounts(self.catalog)
        self.queue = JobQueue(self.catalog, self.vault.config.vault_id)
        self.inventory()  # a broken inventory stops the server at start, not at first use

    @property
    def vault_id(self) -> str:
        return self.vault.config.vault_id

    def points(self) -> list[dict[str, Any]]:
        """The vault's recovery points, oldest first. A point object never changes once
        written, so each is read and decrypted once; the listing says which still exist."""
        from vmvault.errors import CorruptObject, ObjectMissing, PointNotFound

        ids = self.vault.point_ids()
        damaged: dict[str, str] = {}
        with self._points_lock:
            for gone in self._points.keys() - set(ids):
                del self._points[gone]
            for point_id in ids:
                if point_id not in self._points:
                    try:
                        self._points[point_id] = self.vault.get_point(point_id)
                    except PointNotFound:  # forgotten since the listing
                        continue
                    except (CorruptObject, ObjectMissing) as exc:
                        # Costs this point only; read again next time (it may be repaired).
                        damaged[point_id] = exc.message
            if damaged.keys() != self._damaged.keys():
                service.report_damaged_points(self.catalog, self.vault, damaged)
            self._damaged = damaged
            return [self._points[i] for i in ids if i in self._points]

    def damaged_points(self) -> dict[str, str]:
        """Point objects that could not be read at the last listing, with why."""
        self.points()
        with self._points_lock:
            return dict(self._damaged)

    def point(self, point_id: str) -> dict[str, Any]:
        """One point by its full id, or NotFound."""
        from vmvault.errors import NotFound

        for point in self.points():
            if point["id"] == point_id:
                return point
        raise NotFound(f"no recovery point {point_id!r}")

    def inventory(self) -> Inventory:
        """The inventory, reloaded when its file changes."""
        from vmvault.inventory import Inventory, load_inventory

        path = self.config.inventory
        with self._lock:
            if path is None:
                if self._inventory is None:
                    self._inventory = Inventory(source="(no inventory)")
                return self._inventory
            mtime = os.stat(path).st_mtime
            if self._inventory is None or mtime != self._inventory_mtime:
                self._inventory = load_inventory(path)
                self._inventory_mtime = mtime
            return self._inventory

    def replace_inventory(self, text: str) -> Inventory:
        """Validate a new inventory and put it in place atomically (then it is live)."""
        from vmvault.inventory import parse_inventory, write_inventory
        from vmvault.protection import accept_retentions, record_accepted_retentions

        path = self.config.inventory
        if path is None:
            raise Conflict("the server was started without --inventory: nothing to replace")
        # An immutable vault refuses an inventory that keeps any VM's points for less,
        # whatever its policy is called (409, naming the VMs); prune would refuse it too.
        candidate = parse_inventory(text, path)  # raises with the field at fault
        accept_retentions(self.vault, candidate, record=False)
        parsed = write_inventory(path, text)
        # Live now: the points are kept for what it says, even before the next prune. If the
        # vault cannot take the record (read-only, store down), the next prune records it;
        # the inventory, already in place, is not undone for that.
        try:
            record_accepted_retentions(self.vault, parsed)
        except VmvaultError as exc:
            log.warning(
                "inventory replaced; its retentions are recorded at the next prune: %s", exc
            )
        with self._lock:
            self._inventory, self._inventory_mtime = parsed, os.stat(path).st_mtime
        return parsed

    # -- background loops -----------------------------------------------------------------

    def start(self) -> None:
        loops = {"scheduler": self._schedule, "worker": self._work, "alerts": self._deliver}
        wanted = {
            "scheduler": self.config.scheduler,
            "worker": self.config.worker,
            "alerts": self.config.alerts,
        }
        for name, loop in loops.items():
            if not wanted[name]:
                continue
            thread = threading.Thread(target=self._guard, args=(loop,), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)

    def _guard(self, loop: object) -> None:
        """Keep a loop alive: an error is logged and the loop starts again after a pause."""
        assert callable(loop)
        while not self._stop.is_set():
            try:
                loop()
            except Exception:
                log.exception("background loop failed; restarting in 5 s")
                self._stop.wait(5)

    def _schedule(self) -> None:
        from vmvault.jobs.scheduler import SchedulerState, tick

        state = SchedulerState()
        while not self._stop.is_set():
            tick(self.queue, self.inventory(), state, datetime.now(UTC), vault=self.vault)
            self._stop.wait(self.config.tick_seconds)

    def _work(self) -> None:
        from vmvault.jobs.worker import run_worker

        while not self._stop.is_set():
            if self.queue.queued() or self.queue.running():
                run_worker(self.ctx, self.inventory(), once=True, poll=0.2)
            else:
                time.sleep(0.3)

    def _deliver(self) -> None:
        from vmvault.alerts.deliver import deliver_pending

        while not self._stop.is_set():
            deliver_pending(self.catalog, self.vault_id, self.inventory().alerts)
            self._stop.wait(ALERT_EVERY)
