"""The inventory file: valid examples load, broken ones give one line naming file and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support.cli import run_cli
from vmvault.inventory import (
    DiskFormat,
    DiskRole,
    InventoryError,
    load_inventory,
    parse_inventory,
    write_starts,
)

EXAMPLE = """
[policies.daily]
schedule = { kind = "daily", time = "22:30", timezone = "Europe/Berlin" }
retention = { daily_days = 30, weekly_weeks = 12 }

[pools.ssd-a]
egress_mb_per_s = 480
requests_per_second = 20000

[[vms]]
name = "web01"
host = "hv1"
state = "stopped"
policy = "daily"
tags = { cloud_service = "shop" }

  [[vms.disks]]
  name = "os"
  path = "/var/lib/vms/web01-os.img"
  role = "os"
  pool = "ssd-a"

  [[vms.disks]]
  name = "data"
  path = "/var/lib/vms/web01-data.qcow2"
  format = "qcow2"
  pool = "ssd-a"

  [[vms.disks]]
  name = "resource"
  path = "/mnt/resource.img"
  role = "temporary"
"""


def test_example_loads_with_defaults() -> None:
    inv = parse_inventory(EXAMPLE, "inv.toml")
    pool = inv.pools["ssd-a"]
    assert (pool.name, pool.egress_mb_per_s, pool.max_disks_in_flight) == ("ssd-a", 480, 20)
    vm = inv.vm("web01")
    assert [d.name for d in vm.protected_disks()] == ["os", "data"]
    assert [d.name for d in vm.excluded_disks()] == ["resource"]
    assert vm.disks[1].role == DiskRole.DATA and vm.snapshot == "auto"
    assert vm.disks[0].format is None  # the image's header says, at each backup
    assert vm.disks[1].format == DiskFormat.QCOW2 and not vm.disks[1].force_format
    policy = inv.policy("daily")
    assert policy.retention.daily_days == 30 and policy.schedule.timezone == "Europe/Berlin"
    assert inv.policy("default").retention.daily_days == 30  # Azure's default policy
    with pytest.raises(InventoryError, match="no VM named 'db01'"):
        inv.vm("db01")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('role = "os"', 'role = "boot"'), "vms['web01'].disks['os'].role: Input should be"),
        (
            (
                'pool = "ssd-a"\n\n  [[vms.disks]]\n  name = "data"',
                'pool = "ssd-b"\n\n  [[vms.disks]]\n  name = "data"',
            ),
            "unknown pool 'ssd-b'",
        ),
        (("egress_mb_per_s = 480", "egress_mb_per_s = -5"), "pools.ssd-a.egress_mb_per_s"),
        (('name = "resource"', 'name = "os"'), "disk names repeat"),
        (('host = "hv1"', 'host = "hv1"\ncolour = "red"'), "vms['web01'].colour: Extra inputs"),
        (("[[vms]]", "[[vms]"), "not valid TOML"),
        (('role = "temporary"', 'role = "os"'), "at most one os disk"),
        (('policy = "daily"', 'policy = "hourly"'), "unknown policy 'hourly'"),
        (('time = "22:30"', 'time = "25:00"'), "policies.daily.schedule.time"),
        (
            ('policy = "daily"', 'policy = "daily"\nstart = "1:30"'),
            "vms['web01'].start: '1:30' is not a time of day",
        ),
        (('policy = "daily"', 'start = "01:30"'), "start needs a policy"),
        (('"daily"\ntags', '"daily"\nstart = 01:30:15\ntags'), "give the time as HH:MM"),
        (('path = "/mnt/resource.img"', 'path = "/r"\n  used_gb = -1'), "used_gb"),
        (
            ('path = "/mnt/resource.img"', 'path = "/r"\n  force_format = true'),
            "vms['web01'].disks['resource']: force_format needs the format to force",
        ),
        (
            ("[policies.daily]", '[reports]\nmonthly_dir = "reports"\n[policies.daily]'),
            "reports.monthly_dir: 'reports' is not an absolute path",
        ),
    ],
)
def test_broken_inventories_name_the_field(change: tuple[str, str], message: str) -> None:
    broken = EXAMPLE.replace(*change, 1)
    with pytest.raises(InventoryError) as exc:
        parse_inventory(broken, "inv.toml")
    assert exc.value.message.startswith("inv.toml: ")
    assert message in exc.value.message
    assert "\n" not in exc.value.message


def test_missing_inventory_file(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match="does not exist"):
        load_inventory(tmp_path / "nope.toml")


def test_vm_list_and_show_cli(tmp_path: Path) -> None:
    path = tmp_path / "inv.toml"
    path.write_text(EXAMPLE)
    listed = run_cli("vm", "list", "--inventory", str(path), "--json")
    assert listed.returncode == 0, listed.stderr
    [vm] = json.loads(listed.stdout)["vms"]
    assert vm["protected"] == ["os", "data"] and vm["excluded"] == ["resource"]
    wide = {"COLUMNS": "200", "VMVAULT_VAULT": ""}
    shown = run_cli("vm", "show", "web01", "--inventory", str(path), env=wide)
    assert shown.returncode == 0 and "no (temporary)" in shown.stdout
    # whether a disk is included is not whether it was backed up: without a vault, unknown
    header = next(line for line in shown.stdout.splitlines() if line.lstrip().startswith("disk"))
    assert header.split()[-1] == "included" and "backed up" not in shown.stdout
    assert "last backup: unknown (no vault given" in shown.stdout
    as_json = run_cli("vm", "show", "web01", "--inventory", str(path), "--json", env=wide)
    assert "last_backup" not in json.loads(as_json.stdout)
    path.write_text(EXAMPLE.replace('role = "os"', 'role = "boot"'))
    broken = run_cli("vm", "list", "--inventory", str(path))
    assert broken.returncode == 2
    assert broken.stderr.startswith(f"error: {path}: vms['web01'].disks['os'].role")


def test_hourly_start_must_keep_the_runs_inside_the_window() -> None:
    hourly = EXAMPLE.replace(
        'schedule = { kind = "daily", time = "22:30", timezone = "Europe/Berlin" }\n'
        "retention = { daily_days = 30, weekly_weeks = 12 }",
        'schedule = { kind = "hourly", time = "08:00", every_hours = 4, window_hours = 12 }',
    )
    inv = parse_inventory(
        hourly.replace('policy = "daily"', 'policy = "daily"\nstart = 11:30:00'), "i"
    )
    assert inv.vm("web01").start == "11:30"  # TOML's local time is accepted
    with pytest.raises(InventoryError, match="VM web01: start 12:00 is outside the window"):
        parse_inventory(
            hourly.replace('policy = "daily"', 'policy = "daily"\nstart = "12:00"'), "i"
        )


def test_write_starts_keeps_the_file_as_written(tmp_path: Path) -> None:
    path = tmp_path / "inv.toml"
    commented = EXAMPLE.replace('policy = "daily"', 'policy = "daily"   # nightly')
    commented += '\n[[vms]]\nname = "db01"\npolicy = "daily"\nstart = "23:00"\n'
    commented += '  # its disk\n  [[vms.disks]]\n  name = "os"\n  path = "/d"\n'
    path.write_text(commented)
    path.chmod(0o640)
    inv = load_inventory(path)
    written = write_starts(path, {"web01": "01:30", "db01": None}, expected=inv)
    assert written.vm("web01").start == "01:30" and written.vm("db01").start is None
    text = path.read_text()
    # one line added right after the policy it delays, one removed, the rest as it was
    assert text == commented.replace(
        'policy = "daily"   # nightly', 'policy = "daily"   # nightly\nstart = "01:30"'
    ).replace('start = "23:00"\n', "")
    assert path.stat().st_mode & 0o777 == 0o640
    assert load_inventory(path) == written
    # the file changed since the plan was made: nothing written
    with pytest.raises(InventoryError, match="changed since it was read"):
        write_starts(path, {"web01": "02:00"}, expected=inv)
    with pytest.raises(InventoryError, match="no VM named 'nope'"):
        write_starts(path, {"nope": "02:00"})
    assert path.read_text() == text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inv.toml"]  # no temporary left


def test_an_inventory_that_is_not_a_regular_file_is_refused_at_once(tmp_path: Path) -> None:
    """A FIFO (or a directory) named as the inventory: one line, no hang, for the CLI and for
    the daemons' reloading inventory."""
    import os

    from vmvault.inventory import InventoryError, InventoryFile

    fifo = tmp_path / "inventory.toml"
    os.mkfifo(fifo)
    with pytest.raises(InventoryError, match="not a regular file"):
        InventoryFile(str(fifo))()
    done = run_cli("vm", "list", "--inventory", str(fifo))
    assert done.returncode == 2 and "not a regular file" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    with pytest.raises(InventoryError, match="cannot be read: Is a directory"):
        InventoryFile(str(tmp_path))()


def test_a_written_entry_names_its_vm_first_and_leaves_out_empty_tables() -> None:
    from vmvault.inventory.write import vm_entry

    entry = {
        "freeze": [],
        "tags": {},
        "name": "copy",
        "labels": {"tier": "gold"},
        "state": "stopped",
        "disks": [{"path": "/r/copy-os.img", "name": "os", "options": {}}],
    }
    lines = vm_entry(entry)
    assert lines == [
        "[[vms]]",
        'name = "copy"',
        "freeze = []",
        'labels = { tier = "gold" }',
        'state = "stopped"',
        "",
        "  [[vms.disks]]",
        '  name = "os"',
        '  path = "/r/copy-os.img"',
    ]
