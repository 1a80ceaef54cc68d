"""The VM, alert and key tables and the point lines at 80 and 100 columns: no name, id,
time or figure cut with "…" or split over lines; a long name wraps within its column."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
from rich.console import Console

from support.tables import column
from vmvault.cli.render import keys as render_keys
from vmvault.cli.render import points as render_points
from vmvault.cli.render import server as render_server
from vmvault.cli.render import vm as render_vm
from vmvault.inventory import Inventory

LONG_VM = "db01-application-server-east-02"
POINT = "20261129T194003.118215Z-5e0c6a21"
WIDTHS = [80, 100]


def _console(monkeypatch: pytest.MonkeyPatch, module: ModuleType, width: int) -> Console:
    console = Console(width=width, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    monkeypatch.setattr(module, "console", console)
    return console


def _whole(name: str) -> str:
    return "".join(name.split())


def _fleet_row(name: str, last: str | None, consistency: str | None) -> dict[str, Any]:
    return {  # as /api/v1/vms gives them: times as ISO strings
        "name": name,
        "state": "running",
        "policy": "nightly",
        "protection": "protected",
        "last_backup": last,
        "consistency": consistency,
        "next_run": "2026-11-29T22:30:00+00:00",
    }


@pytest.mark.parametrize("width", [*WIDTHS, 140])
def test_the_fleet_writes_times_as_vm_show_does_and_never_cuts_them(
    monkeypatch: pytest.MonkeyPatch, width: int
) -> None:
    console = _console(monkeypatch, render_vm, width)
    render_vm.print_fleet(
        [
            _fleet_row("web01", "2026-11-29T19:40:06.768683+00:00", "application"),
            _fleet_row(LONG_VM, None, None),
        ]
    )
    text = console.export_text()
    assert "…" not in text and "T19" not in text
    assert LONG_VM in column(text, "name", "state")
    assert max(map(len, text.splitlines())) <= width
    if width >= 140:  # room for the whole times, as `vm show` writes them
        assert "2026-11-29 19:40:06 UTC" in text and "2026-11-29 22:30:00 UTC" in text
    else:
        assert "11-29 19:40" in text and "11-29 22:30" in text and "UTC" in text
    assert "never" in text


@pytest.mark.parametrize("width", WIDTHS)
def test_the_inventory_folds_long_names(monkeypatch: pytest.MonkeyPatch, width: int) -> None:
    console = _console(monkeypatch, render_vm, width)
    inv = Inventory.model_validate(
        {
            "vms": [
                {
                    "name": LONG_VM,
                    "policy": "default",
                    "disks": [{"name": "application-data-volume", "path": "/srv/vms/a.img"}],
                },
                {"name": "web01", "disks": [{"name": "os", "path": "/srv/vms/web01-os.img"}]},
            ]
        }
    )
    render_vm.print_inventory(inv)
    text = console.export_text()
    assert "…" not in text
    assert LONG_VM in column(text, "name", "host")
    assert "application-data-volume(data)" in column(text, "protected disks", "excluded")


@pytest.mark.parametrize("width", WIDTHS)
def test_vm_show_folds_paths(monkeypatch: pytest.MonkeyPatch, width: int) -> None:
    console = _console(monkeypatch, render_vm, width)
    path = "/var/lib/libvirt/images/customers/db01-application-server-east-02-data.qcow2"
    inv = Inventory.model_validate(
        {
            "pools": {"ssd": {}},
            "vms": [{"name": LONG_VM, "disks": [{"name": "data", "path": path, "pool": "ssd"}]}],
        }
    )
    vm = inv.vms[0]
    doc = {"excluded": [], "last_backup": "2026-11-29T19:40:06.768683+00:00", "last_point": POINT}
    render_vm.print_vm(vm, doc)
    text = console.export_text()
    assert "…" not in text and path in column(text, "path", "included")
    assert f"last backup: 2026-11-29 19:40:06 UTC (point {POINT})" in text


def _alert(n: int, kind: str, message: str) -> dict[str, Any]:
    return {
        "id": n,
        "at": "2026-11-29T19:40:06.118215+00:00",
        "severity": "critical",
        "kind": kind,
        "vm": LONG_VM,
        "message": message,
        "deliveries": [{"ok": True}, {"ok": False}],
    }


@pytest.mark.parametrize("width", WIDTHS)
def test_alerts_never_cut_the_kind_and_wrap_the_message(
    monkeypatch: pytest.MonkeyPatch, width: int
) -> None:
    console = _console(monkeypatch, render_server, width)
    message = f"backup data deleted: point {POINT} of {LONG_VM} was removed by prune --force"
    render_server.print_alerts(
        [_alert(12, "backup_data_deleted", message), _alert(11, "job_failed", "disk lost")]
    )
    text = console.export_text()
    assert "…" not in text
    assert "backup_data_deleted" in text and "11-29 19:40" in text and "1/2" in text
    messages = column(text, "message", "delivered" if width > 120 else "sent")
    assert _whole(message) + "disklost" == messages


@pytest.mark.parametrize("width", WIDTHS)
def test_the_key_list_cuts_nothing(monkeypatch: pytest.MonkeyPatch, width: int) -> None:
    console = _console(monkeypatch, render_keys, width)
    label = "paper copy in the safe, filed as recovery-0c135b786fa32869cf104dcbf2967b34"
    key = {
        "kind": "recovery",
        "label": label,
        "created": "2026-11-29T19:40:06+00:00",
        "kdf": {"n": 32768, "r": 8, "p": 1},
        "current": False,
        "problem": None,
    }
    doc = {"vault_id": "0c135b786fa32869cf104dcbf2967b34", "keys": [{**key, "id": "9f3a61c2"}]}
    render_keys.print_keys(doc)
    text = console.export_text()
    assert "…" not in text
    assert _whole(label) == column(text, "label", "created (UTC)")
    for whole in ("9f3a61c2", "2026-11-29 19:40", "32768/8/1", "recovery"):
        assert whole in text


@pytest.mark.parametrize("vm", [None, "nosuch"])
def test_no_points_is_a_line_saying_so(monkeypatch: pytest.MonkeyPatch, vm: str | None) -> None:
    console = _console(monkeypatch, render_points, 80)
    render_points.print_points([], [], [], vm)
    assert console.export_text() == (
        "no recovery points (vm nosuch)\n" if vm else "no recovery points\n"
    )


@pytest.mark.parametrize("width", WIDTHS)
def test_a_verify_names_the_vm_and_the_whole_point(
    monkeypatch: pytest.MonkeyPatch, width: int
) -> None:
    console = _console(monkeypatch, render_points, width)
    disk = {"disk": "os", "vm": LONG_VM, "chunks": 520, "bytes_verified": 34078720}
    render_points.print_verified({"point": POINT, "disks": [{**disk, "damaged": []}]})
    text = console.export_text()
    assert text == f"{POINT} {LONG_VM} os: ok, 520 chunks, 32.5 MiB verified\n"


@pytest.mark.parametrize("width", WIDTHS)
def test_a_restore_line_longer_than_the_terminal_is_one_line(
    monkeypatch: pytest.MonkeyPatch, width: int
) -> None:
    console = _console(monkeypatch, render_points, width)
    doc = {
        "disk": "application-data-volume",
        "vm": LONG_VM,
        "point": POINT,
        "target": "/var/lib/libvirt/images/restored/application-data-volume.img",
        "size": 256 * 2**20,
        "bytes_verified": 137_258_598,
        "seconds": 1.754,
        "damaged": [],
    }
    render_points.print_restored(doc)
    text = console.export_text()
    assert text.count("\n") == 1  # the terminal wraps it, at its edge: nothing is split
    assert text.rstrip().endswith("256.0 MiB, 130.9 MiB verified, 1.75 s (74.6 MiB/s)")
