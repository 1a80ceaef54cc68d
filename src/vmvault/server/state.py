"""What a running server holds: where the vault, catalog and inventory are, the opened vault,
and the background loops (scheduler, worker, alert delivery) of the one-process mode."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from datetime import time as clock_time
from typing import TYPE_CHECKING, Any

from vmvault.app.context import Context, PassphrasePrompt
from vmvault.app.records import report_damaged_points
from vmvault.errors import (
    Conflict,
    CorruptObject,
    ObjectMissing,
    PointNotFound,
    VmvaultError,
)
from vmvault.inventory import Inventory, InventoryFile, parse_inventory, write_inventory
from vmvault.jobs.daemon import LOOPS, Daemon
from vmvault.jobs.queue import JobQueue, job_doc
from vmvault.jobs.startup import startup_summary
from vmvault.model.point import RecoveryPoint
from vmvault.point_refs import match_point
from vmvault.protection import accept_retentions, record_accepted_retentions
from vmvault.server.accounts import Accounts

if TYPE_CHECKING:
    from vmvault.catalog.store import Catalog
    from vmvault.vault.vault import Vault

log = logging.getLogger("vmvault.server")


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
    maintenance_time: clock_time = clock_time(12, 0)  # UTC: daily retention and GC
    secure_cookies: bool = False  # set when serving TLS
    ask_passphrase: PassphrasePrompt | None = None  # a terminal's prompt, if started at one
    # A fleet: jobs are sent through this Redis to `vmvault worker --host` processes, and
    # the worker loop here only reaps lost jobs and sends lost messages again.
    broker: str | None = None


NO_WORKER_NOTE = (
    "this server runs no worker (--no-scheduler): the job stays queued until a vmvault "
    "worker or vmvault scheduler sharing this catalog runs it"
)


@dataclass
class ServerState:
    config: ServerConfig
    ctx: Context = field(init=False)
    vault: Vault = field(init=False)
    catalog: Catalog = field(init=False)
    accounts: Accounts = field(init=False)
    queue: JobQueue = field(init=False)
    daemon: Daemon = field(init=False)
    _inventory: InventoryFile = field(init=False)
    _points: dict[str, RecoveryPoint] = field(default_factory=dict, init=False)
    _points_lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _damaged: dict[str, str] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        c = self.config
        self.ctx = Context(
            c.vault, c.catalog_url, c.passphrase_file, ask_passphrase=c.ask_passphrase
        )
        self.vault = self.ctx.open_vault(load_index=False)  # fails early on a bad passphrase
        self.catalog = self.ctx.catalog()
        self.accounts = Accounts(self.catalog)
        self._inventory = InventoryFile(c.inventory)
        fleet = None
        if c.broker:  # Celery: loaded only for a fleet
            from vmvault.cluster.broker import fleet_queue
            from vmvault.cluster.settings import FleetSettings

            fleet = FleetSettings.from_env(c.broker)
            self.queue = fleet_queue(self.catalog, self.vault_id, fleet, self._inventory)
        else:
            self.queue = JobQueue(self.catalog, self.vault.config.vault_id)
        wanted = {"scheduler": c.scheduler, "worker": c.worker, "alerts": c.alerts}
        self.daemon = Daemon(
            self.ctx,
            self.vault,
            self.queue,
            self._inventory,
            loops=[name for name in LOOPS if wanted[name]],
            tick_seconds=c.tick_seconds,
            maintenance_time=c.maintenance_time,
            fleet=fleet,
        )
        self.inventory()  # a broken inventory stops the server at start, not at first use

    @property
    def vault_id(self) -> str:
        return self.vault.config.vault_id

    def points(self) -> list[RecoveryPoint]:
        """The vault's recovery points, oldest first. A point object never changes once
        written, so each is read and decrypted once; the listing says which still exist."""

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
                report_damaged_points(self.catalog, self.vault, damaged)
            self._damaged = damaged
            return [self._points[i] for i in ids if i in self._points]

    def queued(self, job_id: int) -> dict[str, Any]:
        """A job just queued, as the API's 202 answers it; with a ``note`` when nothing here
        will run it (`serve --no-scheduler`, no fleet): it waits for another process."""
        doc = job_doc(self.queue.get(job_id))
        if not self.config.worker and self.config.broker is None:
            doc["note"] = NO_WORKER_NOTE
        return doc

    def damaged_points(self) -> dict[str, str]:
        """Point objects that could not be read at the last listing, with why."""
        self.points()
        with self._points_lock:
            return dict(self._damaged)

    def point(self, point_id: str) -> RecoveryPoint:
        """One point by its id or a unique prefix of one: PointNotFound (404) or
        AmbiguousPoint (400)."""
        points = {p["id"]: p for p in self.points()}
        return points[match_point(points, point_id)]

    def inventory(self) -> Inventory:
        """The inventory, reloaded when its file changes."""
        return self._inventory()

    def replace_inventory(self, text: str) -> Inventory:
        """Validate a new inventory and put it in place atomically (then it is live)."""
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
        self._inventory.replaced(parsed)
        return parsed

    # -- background loops (jobs/daemon.py) ----------------------------------------------

    def start(self) -> None:
        c = self.config
        if c.scheduler:  # what it will run, logged once, as `vmvault scheduler` does
            summary = startup_summary(
                self.catalog,
                self.ctx.vault_path,
                self.vault,
                self.inventory(),
                now=datetime.now(UTC),
                maintenance_time=c.maintenance_time,
                interval=c.tick_seconds,
            )
            for line in summary:
                log.info("%s", line)
        else:
            log.info("vault %s at %s; no scheduler (--no-scheduler)", self.vault_id, c.vault)
        self.daemon.start()

    def stop(self) -> None:
        self.daemon.stop()
