"""Small pieces: key validation, token bucket, disk source ranges, catalog."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vmvault.backends.local import LocalBackend
from vmvault.disks.source import RawDisk
from vmvault.engine.throttle import TokenBucket
from vmvault.errors import ObjectMissing, UsageError
from vmvault.units import exact_duration, human_duration, measured_duration


@pytest.mark.parametrize("key", ["../etc/passwd", "/etc/passwd", "a/../../b", "", "a//b", "."])
def test_backend_refuses_keys_outside_the_vault(tmp_path: Path, key: str) -> None:
    backend = LocalBackend(tmp_path / "v")
    with pytest.raises(UsageError):
        backend.put(key, b"x")
    assert not (tmp_path / "etc").exists()


def test_backend_put_get_list_delete(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)
    backend.put("packs/ab/abcd", b"hello world")
    assert backend.get("packs/ab/abcd", 6, 5) == b"world"
    assert list(backend.list("packs/")) == ["packs/ab/abcd"]
    assert backend.exists("packs/ab/abcd") and backend.size("packs/ab/abcd") == 11
    backend.delete("packs/ab/abcd")
    backend.delete("packs/ab/abcd")
    with pytest.raises(ObjectMissing):
        backend.get("packs/ab/abcd")
    assert backend.list_leftovers() == []


def test_token_bucket_paces_to_the_rate() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    bucket = TokenBucket(100.0, burst=100.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(10):
        bucket.consume(50)
    # 500 units at 100/s with a 100-unit burst: 4 s of waiting, however it is split
    assert sum(slept) == pytest.approx(4.0)
    with pytest.raises(ValueError):
        TokenBucket(0)


def test_raw_disk_finds_holes(tmp_path: Path) -> None:
    path = tmp_path / "s.img"
    with open(path, "wb") as f:
        f.truncate(8 << 20)
        f.seek(1 << 20)
        f.write(os.urandom(4096))
    with RawDisk.open(path) as disk:
        ranges = disk.data_ranges(0, disk.size)
        assert len(ranges) == 1 and ranges[0][0] <= (1 << 20) < ranges[0][1]
        assert sum(b - a for a, b in ranges) < (1 << 20)
        assert disk.data_ranges(2 << 20, 8 << 20) == []
        buf = bytearray(8192)
        disk.read_into(memoryview(buf), disk.size - 4096)  # past the end reads zeros
        assert buf == bytes(8192)


def test_an_rpo_is_written_exactly_not_rounded() -> None:
    hour = 3600
    got = [exact_duration(s) for s in (45 * 60, 1.25 * hour, 5 * hour, 30 * hour, 47 * hour)]
    assert got == ["45 min", "1.25 h", "5 h", "30 h", "47 h"]  # hours up to two days
    assert exact_duration(48 * hour) == "2 days"
    assert exact_duration(8.75 * 24 * hour) == "8.75 days"  # weekly on one day
    assert human_duration(30 * hour) == "1.2 days"  # a measured lag stays rounded


def test_a_measured_duration_under_ten_seconds_keeps_its_decimals() -> None:
    assert measured_duration(0.26) == "0.26 s"  # a mean backup time, not "0 s"
    assert measured_duration(0) == "0 s" and measured_duration(2.5) == "2.5 s"
    assert measured_duration(42) == "42 s" and measured_duration(600) == "10 min"
