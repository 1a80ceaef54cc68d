"""The seed's throughput table, reproduced exactly."""

from __future__ import annotations

import pytest

from vmvault.planning.estimate import DiskLoad, estimate_backup

TB = 10**12
GB = 10**9


def test_one_terabyte_initial_at_160_mbps() -> None:
    estimate = estimate_backup([DiskLoad("os", TB, "os")], initial=True, snapshot_seconds=0)
    assert estimate.transfer_seconds == pytest.approx(50_000)  # 10^12 B / 20 MB/s = 13.9 h
    assert estimate.rate_source == "seed table"


def test_incremental_at_640_mbps_and_default_churn() -> None:
    estimate = estimate_backup([DiskLoad("os", TB, "os")], initial=False, snapshot_seconds=0)
    assert estimate.changed_bytes == 50 * GB  # 5 % of the data
    assert estimate.transfer_seconds == pytest.approx(50 * GB / 60e6)  # 80 MB/s capped at 60
    measured = estimate_backup(
        [DiskLoad("os", TB, "os")], initial=False, measured_changed_bytes=10 * GB, measured_mbps=80
    )
    assert measured.transfer_seconds == pytest.approx(10 * GB / 10e6)
    assert measured.rate_source == "measured"


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
