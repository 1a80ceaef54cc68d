"""What a job is and where it stands. Stored as their string values (the catalog's ``kind``
and ``state`` columns, the API's JSON), so a ``JobKind`` compares equal to its string."""

from __future__ import annotations

from enum import StrEnum


class JobKind(StrEnum):
    BACKUP = "backup"  # a VM of the inventory (queued), or disk images (CLI)
    RESTORE = "restore"
    VERIFY = "verify"
    MAINTENANCE = "maintenance"  # purge, retention, instant-restore expiry, GC
    REPLICATE = "replicate"  # the points a copy of the vault lacks, sent to it


class JobState(StrEnum):
    """queued -> running -> one of the final states (see jobs/queue.py)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    PARTIALLY_SUCCEEDED = "partially_succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self not in (JobState.QUEUED, JobState.RUNNING)


FINAL_STATES = tuple(s for s in JobState if s.final)
