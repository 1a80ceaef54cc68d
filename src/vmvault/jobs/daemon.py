"""The one daemon loop of a process that serves the queue: scheduler ticks, a worker and
alert delivery, each in its own thread, so a long backup never holds up the scheduling of
the next one. ``vmvault scheduler`` runs it in the foreground, ``vmvault serve`` beside its
API.

With a broker (a fleet: ``fleet`` is given) the queue sends each job to the workers of its
host, and the "worker" loop runs no job here: it reaps the jobs of lost workers (which sends
them again) and sends again the due jobs still queued long after their message."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from datetime import time as clock_time
from typing import TYPE_CHECKING

from vmvault.alerts.deliver import deliver_pending
from vmvault.app.context import Context
from vmvault.engine.progress import SHUTDOWN
from vmvault.inventory import Inventory
from vmvault.jobs.queue import JobQueue
from vmvault.jobs.scheduler import SchedulerState, tick
from vmvault.jobs.worker import STOP_GRACE, alert_failure, run_worker
from vmvault.vault.vault import Vault

if TYPE_CHECKING:
    from vmvault.cluster.settings import FleetSettings

log = logging.getLogger("vmvault.scheduler")
LOOPS = ("scheduler", "worker", "alerts")
ALERT_EVERY = 2.0  # seconds between looks for undelivered alerts
IDLE_POLL = 0.3  # seconds between looks at an empty queue
RESTART_AFTER = 5.0  # seconds before a loop that failed starts again


@dataclass
class Daemon:
    """The loops named in ``loops`` over one vault's queue. ``inventory`` is asked at every
    turn, so an inventory reloaded from its file is used from the next turn on."""

    ctx: Context
    vault: Vault
    queue: JobQueue
    inventory: Callable[[], Inventory]
    loops: Iterable[str] = LOOPS
    tick_seconds: float = 30.0
    maintenance_time: clock_time = clock_time(12, 0)
    worker_poll: float = 0.2
    fleet: FleetSettings | None = None  # jobs go to a fleet's workers through its broker
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _threads: list[threading.Thread] = field(default_factory=list, init=False)

    def start(self) -> None:
        targets = {"scheduler": self._schedule, "worker": self._work, "alerts": self._deliver}
        for name in self.loops:
            thread = threading.Thread(
                target=self._guard, args=(targets[name],), name=name, daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self, grace: float = 10.0) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=grace)

    def run(self) -> None:
        """In the foreground until interrupted (SIGTERM or Ctrl-C): running jobs then hand
        themselves back to the queue and the loops end."""
        self.start()
        try:
            while not self._stop.wait(1.0):
                pass
        except KeyboardInterrupt:
            SHUTDOWN.set()  # jobs stop at their next block or wait, and are queued again
            self.stop(STOP_GRACE)
            raise

    def run_once(self) -> list[int]:
        """One turn of each loop in order: queue what is due, run the queue until it is
        empty, deliver alerts. Returns the ids of the jobs queued."""
        queued = self._tick(SchedulerState())
        if self.fleet is not None:
            self._reap()  # the fleet's workers run the jobs
        else:
            run_worker(self.ctx, self.inventory(), once=True, poll=self.worker_poll)
        deliver_pending(self.queue.catalog, self.vault.config.vault_id, self.inventory().alerts)
        return queued

    def _guard(self, loop: Callable[[], None]) -> None:
        """Keep a loop alive: an error is logged and the loop starts again after a pause."""
        while not self._stop.is_set():
            try:
                loop()
            except Exception:
                log.exception("background loop failed; restarting in %.0f s", RESTART_AFTER)
                self._stop.wait(RESTART_AFTER)

    def _tick(self, state: SchedulerState) -> list[int]:
        return tick(
            self.queue,
            self.inventory(),
            state,
            datetime.now(UTC),
            vault=self.vault,
            maintenance_time=self.maintenance_time,
        )

    def _schedule(self) -> None:
        state = SchedulerState()
        while not self._stop.is_set():
            self._tick(state)
            self._stop.wait(self.tick_seconds)

    def _reap(self) -> None:
        for lost, outcome in self.queue.reap():
            if outcome == "failed":
                alert_failure(self.queue, lost, ("worker_lost", "its worker stopped answering"))

    def _work(self) -> None:
        if self.fleet is not None:
            self._dispatch()
            return
        while not self._stop.is_set():
            if self.queue.queued() or self.queue.running():
                run_worker(
                    self.ctx, self.inventory(), once=True, poll=self.worker_poll, stop=self._stop
                )
            else:
                self._stop.wait(IDLE_POLL)

    def _dispatch(self) -> None:
        """A fleet's "worker" loop: reap lost jobs (sent again) and send again the lost
        messages; the jobs themselves run in the workers."""
        # Celery and redis: only with a broker
        from vmvault.cluster.broker import Sweeper
        from vmvault.cluster.presence import HostWatch, WorkerPresence
        from vmvault.cluster.redis_limits import RedisGate, connect
        from vmvault.jobs.admission import limits_of

        assert self.fleet is not None
        client = connect(self.fleet.broker)
        vault_id = self.vault.config.vault_id
        gate = RedisGate(client, vault_id, lambda: limits_of(self.inventory()), self.fleet.lease)
        sweep = Sweeper(self.queue, self.fleet, waiting=gate.waiting)
        watch = HostWatch(
            self.queue, WorkerPresence(client, vault_id), self.inventory, self.fleet.no_worker_after
        )
        every = max(0.2, min(self.fleet.heartbeat, self.fleet.stale_after / 3))
        while not self._stop.is_set():
            self._reap()
            sweep()
            try:
                watch()
            except Exception as exc:  # Redis or the catalog away for a moment: next turn
                log.warning("warning: cannot look for hosts without a worker (%s)", exc)
            self._stop.wait(every)

    def _deliver(self) -> None:
        while not self._stop.is_set():
            deliver_pending(self.queue.catalog, self.vault.config.vault_id, self.inventory().alerts)
            self._stop.wait(ALERT_EVERY)
