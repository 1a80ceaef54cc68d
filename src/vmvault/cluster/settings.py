"""What a fleet's processes agree on: the broker, and the timings of heartbeats, leases,
retries and redelivery (environment variables, for operators and tests)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

from vmvault.errors import UsageError

BROKER_ENV = "VMVAULT_BROKER"
ANY_QUEUE = "vmvault.any"  # verify, replicate, maintenance: any worker
TASK = "vmvault.run_job"


def host_queue(host: str) -> str:
    """The queue of one hypervisor's worker: its VMs' backups and restores."""
    return f"vmvault.host.{host}"


def _seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise UsageError(f"{name} must be a number of seconds, not {raw!r}") from None
    if not value > 0:
        raise UsageError(f"{name} must be more than 0 seconds")
    return value


@dataclass(frozen=True)
class FleetSettings:
    broker: str
    heartbeat: float = 10.0  # seconds between a running job's heartbeats
    stale_after: float = 120.0  # a job whose heartbeat is this old is reaped
    backoff: float = 30.0  # the first retry's delay (doubling)
    lease: float = 30.0  # an admission lease expires this long after its last renewal
    # A message not acknowledged this long after delivery is delivered again (its worker
    # died): longer than most jobs, since a job still running when it passes gets a
    # duplicate message (a no-op: the job is not queued). The reaper, not this, is what
    # brings a dead worker's job back within ``stale_after``.
    visibility_timeout: float = 6 * 3600.0
    resend_after: float = 300.0  # a due job still queued this long is sent again
    # A due job of a host with no live worker this long raises `host_without_worker`.
    no_worker_after: float = 300.0

    @classmethod
    def from_env(cls, broker: str) -> FleetSettings:
        if not broker.startswith(("redis://", "rediss://", "unix://")):
            raise UsageError(f"the broker must be a Redis URL (redis://HOST:PORT/DB): {broker!r}")
        return cls(
            broker,
            heartbeat=_seconds("VMVAULT_HEARTBEAT_SECONDS", cls.heartbeat),
            stale_after=_seconds("VMVAULT_STALE_AFTER_SECONDS", cls.stale_after),
            backoff=_seconds("VMVAULT_RETRY_BACKOFF_SECONDS", cls.backoff),
            lease=_seconds("VMVAULT_LEASE_SECONDS", cls.lease),
            visibility_timeout=_seconds("VMVAULT_VISIBILITY_TIMEOUT", cls.visibility_timeout),
            resend_after=_seconds("VMVAULT_RESEND_AFTER_SECONDS", cls.resend_after),
            no_worker_after=_seconds("VMVAULT_NO_WORKER_AFTER_SECONDS", cls.no_worker_after),
        )

    def queue_timings(self) -> dict[str, timedelta]:
        return {
            "backoff": timedelta(seconds=self.backoff),
            "stale_after": timedelta(seconds=self.stale_after),
        }
