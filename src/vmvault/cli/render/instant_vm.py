"""Human output of `vmvault vm instant-restore`: the VM booted, the list, finish and stop."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vmvault.cli.output import console, human_bytes


def _say(text: str) -> None:
    console.print(text, highlight=False, soft_wrap=True)


def _where(doc: Mapping[str, Any]) -> None:
    """What a user reaches the VM by, one line each."""
    state = Path(doc["state"])
    _say(f"  console  {state / 'console.log'}")
    _say(f"  QMP      {state / 'qmp.sock'}")
    _say(f"  screen   vncviewer {state / 'vnc.sock'}")
    _say(f"  agent    {state / 'agent.sock'}")


def _disks(doc: Mapping[str, Any]) -> None:
    for disk in doc["disks"]:
        backing = "" if doc.get("finished") else f" (over export {disk['export']})"
        _say(f"  disk     {disk['name']}: {disk['overlay']}, {human_bytes(disk['size'])}{backing}")


def print_instant_vm(doc: Mapping[str, Any]) -> None:
    _say(
        f"instant VM {doc['name']}: {doc['vm']}'s point {doc['point']} running, "
        f"started in {doc['seconds']:.1f} s ({doc['accel']}), pid {doc['pid']}"
    )
    _disks(doc)
    _where(doc)
    _say(
        f"move its disks off the vault: vmvault vm instant-restore --finish {doc['name']}; "
        f"discard it: --stop {doc['name']}"
    )


def print_instant_vms(doc: Mapping[str, Any]) -> None:
    if not doc["vms"]:
        _say("no instant VMs")
        return
    for vm in doc["vms"]:
        if "pid" not in vm:
            _say(f"{vm['name']}  {vm['status']}")
            continue
        _say(
            f"{vm['name']}  {vm['status']}, {vm['vm']}'s point {vm['point']}, "
            f"since {vm['started'].replace('+00:00', 'Z')}, pid {vm['pid']}"
        )
        _disks(vm)
        _where(vm)


def print_finished(doc: Mapping[str, Any]) -> None:
    status = doc["status"]
    if status == "discarded":
        _say(f"discarded instant VM {doc['name']}: stopped, its overlays deleted")
        return
    if status == "finished":
        _say(f"instant VM {doc['name']} runs from its own disks now; the exports ended")
    else:
        _say(f"instant VM {doc['name']} (stopped) has its own disks now; the exports ended")
    for disk in doc["disks"]:
        _say(f"  disk     {disk['name']}: {disk['overlay']}")
    if status == "finished":
        _where(doc)
