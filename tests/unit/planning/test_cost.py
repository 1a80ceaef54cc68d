"""The cost model: the seed's worked example, tier edges, billing rules and the report."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmvault.planning.cost import (
    GB,
    DiskUsage,
    PointUsage,
    PriceTable,
    VmUsage,
    billing_active,
    billing_decision,
    instance_count,
    instance_price,
    money,
    monthly_report,
    protected_instance_size,
    storage_attribution,
    storage_price,
)
from vmvault.policy.protection import ProtectionStatus

FIRST = datetime(2024, 1, 1, tzinfo=UTC)

SEED_DISKS = [
    DiskUsage(17 * GB, "os", "os"),
    DiskUsage(5 * GB, "temporary", "resource"),
    DiskUsage(30 * GB, "data", "data1"),
    DiskUsage(0, "data", "data2"),
]


def test_seed_example_is_47_gb() -> None:
    size = protected_instance_size(SEED_DISKS)
    assert size == 47 * GB
    assert instance_price(size) == Decimal("5")


@pytest.mark.parametrize(
    ("size", "price", "count"),
    [
        (0, "5", 1),
        (50 * GB, "5", 1),
        (50 * GB + 1, "10", 1),
        (500 * GB, "10", 1),
        (500 * GB + 1, "20", 2),
        (501 * GB, "20", 2),
        (1000 * GB, "20", 2),
        (1001 * GB, "30", 3),
    ],
)
def test_tier_boundaries(size: int, price: str, count: int) -> None:
    assert instance_price(size) == Decimal(price)
    assert instance_count(size) == count


def test_custom_table_and_bad_inputs() -> None:
    table = PriceTable(currency="EUR", small_price=Decimal("4"), instance_price=Decimal("9"))
    assert instance_price(600 * GB, table) == Decimal("18")
    with pytest.raises(ValueError):
        instance_price(-1)
    with pytest.raises(ValueError):
        PriceTable(small_price=Decimal("11"))
    with pytest.raises(ValueError):
        protected_instance_size([DiskUsage(-1)])


def test_storage_price_uses_decimal_gb() -> None:
    assert storage_price(100 * GB) == Decimal("2.24")
    assert storage_price(0) == Decimal("0.00")


@pytest.mark.parametrize(
    ("first", "status", "has_data", "billed"),
    [
        (None, "protected", False, False),  # never backed up
        (None, "protected", True, False),
        (FIRST, "protected", True, True),
        (FIRST, "stopped-retain", True, True),  # stop protection, retain data
        (FIRST, "stopped-deleted", True, False),  # soft delete is not billed
        (FIRST, "purged", False, False),
        (FIRST, "stopped-retain", False, False),  # nothing left in the vault
    ],
)
def test_billing_rules(
    first: datetime | None, status: ProtectionStatus, has_data: bool, billed: bool
) -> None:
    assert billing_active(first, status, has_data) is billed
    assert billing_decision(first, status, has_data)[1]


def test_storage_attribution_sums_new_bytes_per_writer() -> None:
    points = [
        PointUsage("a", {"os": 10 * GB, "data": 5 * GB}),
        PointUsage("a", {"os": 1 * GB}),  # incremental: only the new chunks
        PointUsage("b", {"os": 0}),  # fully deduplicated against "a": costs b nothing
        PointUsage("b", {"data": 3 * GB}),
    ]
    assert storage_attribution(points) == {"a": 16 * GB, "b": 3 * GB}
    assert storage_attribution([]) == {}


def _fleet() -> list[VmUsage]:
    return [
        VmUsage("web", SEED_DISKS, [PointUsage("web", {"os": 20 * GB})], FIRST),
        VmUsage("db", [DiskUsage(501 * GB, "os")], [PointUsage("db", {"os": 400 * GB})], FIRST),
        VmUsage(
            "old",
            [DiskUsage(60 * GB, "os")],
            [PointUsage("old", {"os": 50 * GB})],
            FIRST,
            "stopped-retain",
        ),
        VmUsage(
            "gone",
            [DiskUsage(60 * GB, "os")],
            [PointUsage("gone", {"os": GB})],
            FIRST,
            "stopped-deleted",
        ),
        VmUsage("new", [DiskUsage(10 * GB, "os")]),
    ]


def test_report_rows_and_totals() -> None:
    report = monthly_report(_fleet())
    rows = {row.vm: row for row in report.rows}
    assert [row.vm for row in report.rows] == sorted(rows)
    assert rows["web"].instance_cost == Decimal("5")
    assert rows["web"].storage_cost == Decimal("0.45")  # 20 GB * 0.0224
    assert rows["db"].instances == 2 and rows["db"].instance_cost == Decimal("20")
    assert rows["old"].billed and rows["old"].instance_cost == Decimal("10")
    assert not rows["gone"].billed and rows["gone"].total == 0
    assert not rows["new"].billed and rows["new"].instances == 0
    assert rows["new"].protected_instance_bytes == 10 * GB

    assert report.total == sum(row.total for row in report.rows)
    assert report.instance_cost == sum(row.instance_cost for row in report.rows)
    assert report.storage_cost == sum(row.storage_cost for row in report.rows)
    assert report.instances == sum(row.instances for row in report.rows)
    assert report.total == report.instance_cost + report.storage_cost
    doc = report.to_dict()
    assert doc["currency"] == "USD"
    assert Decimal(doc["totals"]["total"]) == report.total
    assert len(doc["rows"]) == 5


def test_report_csv_has_header_and_one_line_per_vm() -> None:
    report = monthly_report(_fleet())
    text = report.to_csv()
    lines = text.splitlines()
    assert lines[0].startswith("vm,protected_instance_bytes,instances,")
    assert len(lines) == 1 + len(report.rows)
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert {row["vm"] for row in parsed} == {"web", "db", "old", "gone", "new"}


def test_report_refuses_duplicate_vms() -> None:
    with pytest.raises(ValueError):
        monthly_report([VmUsage("a", []), VmUsage("a", [])])


@given(st.integers(0, 10**13), st.integers(0, 10**13))
def test_instance_price_is_non_decreasing(a: int, b: int) -> None:
    small, large = sorted((a, b))
    assert instance_price(small) <= instance_price(large)


def test_amounts_in_the_report_are_shown_to_the_cent() -> None:
    assert [money(Decimal(x)) for x in ("5", "0", "20.5", "0.125", "1.004")] == [
        "5.00",
        "0.00",
        "20.50",
        "0.13",
        "1.00",
    ]
