"""The fleet read model: a VM's next run follows its own start, not only its policy."""

from __future__ import annotations

from datetime import UTC, datetime

from vmvault.fleet import fleet
from vmvault.inventory import parse_inventory


def test_next_run_honours_the_vms_own_start() -> None:
    inv = parse_inventory(
        """
[policies.nightly]
schedule = { kind = "daily", time = "22:00" }

[[vms]]
name = "early"
policy = "nightly"
  [[vms.disks]]
  name = "os"
  path = "/dev/null"

[[vms]]
name = "late"
policy = "nightly"
start = "23:30"
  [[vms.disks]]
  name = "os"
  path = "/dev/null"
""",
        "inv.toml",
    )
    now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    rows = {r["name"]: r for r in fleet(inv, [], {"late": "protected"}, [], now)}
    assert rows["early"]["next_run"] == "2026-11-27T22:00:00+00:00"
    assert rows["late"]["next_run"] == "2026-11-27T23:30:00+00:00"
    stopped = fleet(inv, [], {"late": "stopped-retain"}, [], now)
    assert [r["next_run"] is None for r in stopped] == [False, True]
