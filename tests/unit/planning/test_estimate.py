"""The seed's throughput table, reproduced exactly; measured history replacing it."""

from __future__ import annotations

import pytest

from vmvault.planning.estimate import (
    DiskLoad,
    DiskRun,
    Estimate,
    PastBackup,
    estimate_backup,
    measure,
)

TB = 10**12
GB = 10**9


def test_one_terabyte_initial_at_160_mbps() -> None:
    estimate = estimate_backup([DiskLoad("os", TB, "os")], initial=True, snapshot_seconds=0)
    assert estimate.transfer_seconds == pytest.approx(50_000)  # 10^12 B / 20 MB/s = 13.9 h
    assert estimate.rate_source == "Azure's rates"


def test_incremental_at_640_mbps_and_default_churn() -> None:
    estimate = estimate_backup([DiskLoad("os", TB, "os")], initial=False, snapshot_seconds=0)
    assert estimate.changed_bytes == 50 * GB  # 5 % of the data
    assert estimate.transfer_seconds == pytest.approx(50 * GB / 60e6)  # 80 MB/s capped at 60
    assert estimate.changed_source == "daily change 5%" and estimate.snapshot_source == "given"


def test_disks_run_in_parallel_and_temporary_disks_are_excluded() -> None:
    disks = [
        DiskLoad("os", 17 * GB, "os"),
        DiskLoad("resource", 5 * GB, "temporary"),
        DiskLoad("data1", 30 * GB),
        DiskLoad("data2", 0),
    ]
    estimate = estimate_backup(disks, initial=True, snapshot_seconds=60, queue_wait_seconds=30)
    assert estimate.read_bytes == 47 * GB  # the seed's example
    assert estimate.transfer_seconds == pytest.approx(30 * GB / 20e6)  # the largest disk
    assert estimate.total_seconds == pytest.approx(30 * GB / 20e6 + 90)


def test_measured_history_replaces_the_table_per_kind_and_disk() -> None:
    history = [
        PastBackup(True, [DiskRun("os", 40 * GB, 40 * GB, 1000.0)], 1100.0),  # 40 MB/s
        *(
            PastBackup(False, [DiskRun("os", 40 * GB, changed * GB, 400.0)], 420.0)  # 100 MB/s
            for changed in (9, 1, 2, 3)
        ),
    ]
    disks = [DiskLoad("os", 40 * GB, "os"), DiskLoad("data", 20 * GB)]  # data: a new disk
    initial = estimate_backup(disks, initial=True, measured=measure(history, initial=True))
    assert initial.rate_source == "measured (1 backup)"
    assert initial.disks[0].rate == pytest.approx(40e6)
    assert initial.disks[1].rate == pytest.approx(40e6)  # the VM's rate for a disk it lacks
    assert initial.transfer_seconds == pytest.approx(1000.0)
    assert initial.snapshot_seconds == pytest.approx(100.0)  # the job beyond its slowest disk
    assert initial.snapshot_source == "measured (1 backup)"
    incremental = estimate_backup(
        disks, initial=False, measured=measure(history, initial=False), cap_mb_s=1000
    )
    assert incremental.rate_source == "measured (3 backups)"  # the last three of the kind
    assert incremental.changed_source == "measured (3 backups)"
    assert incremental.changed_bytes == 2 * GB + 20 * GB // 20  # mean of 1, 2, 3 + 5 % of data
    assert incremental.disks[0].rate == pytest.approx(100e6)
    # no change tracking: incrementals read the whole disk, and so does the estimate
    assert incremental.disks[0].seconds == pytest.approx(400.0)
    assert incremental.disks[1].seconds == pytest.approx(200.0)  # never read: read in full
    capped = estimate_backup(disks, initial=False, measured=measure(history, initial=False))
    assert capped.disks[0].rate == pytest.approx(60e6)  # the per-disk cap still holds
    assert measure(history[:1], initial=False) is None
    assert estimate_backup(disks, initial=False, measured=None).rate_source == "Azure's rates"


def test_a_snapshot_time_measured_by_the_other_kind_stands_in_for_the_default() -> None:
    """Snapshot and commit cost the same for a full backup and an incremental one: a VM with
    only full backups has its incremental estimate use their snapshot time, not 60 s."""
    disks = [DiskLoad("os", GB, "os")]

    def incremental_of(history: list[PastBackup]) -> Estimate:
        return estimate_backup(
            disks,
            initial=False,
            measured=measure(history, initial=False),
            other_kind=measure(history, initial=True),
        )

    full = [PastBackup(True, [DiskRun("os", GB, GB, 2.0)], 2.74)]
    incremental = incremental_of(full)
    assert incremental.snapshot_seconds == pytest.approx(0.74)
    assert incremental.snapshot_source == "measured (1 backup, initial)"
    assert incremental.rate_source == "Azure's rates"  # only the snapshot time is borrowed
    # a kind's own measurement wins; nothing measured anywhere: the default
    both = [*full, PastBackup(False, [DiskRun("os", GB, GB // 50, 1.0)], 1.5)]
    own = incremental_of(both)
    assert own.snapshot_seconds == pytest.approx(0.5)
    assert own.snapshot_source == "measured (1 backup)"
    unmeasured = [PastBackup(True, [DiskRun("os", GB, GB, 2.0)], None)]  # no job wall time
    default = estimate_backup(disks, initial=False, other_kind=measure(unmeasured, initial=True))
    assert default.snapshot_seconds == 60.0 and default.snapshot_source == "default"
