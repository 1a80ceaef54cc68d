"""`vmvault demo`: the main job end to end on a generated VM, saying what it does.

Make a VM (a realistic OS disk, a qcow2 data disk, a temporary disk, pre/post scripts),
back it up with its consistency level, let the guest change 1 % of the OS disk, back it up
again (incremental), restore the OS disk of both points and the data disk, and prove each
identical to what the guest had at backup time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blake3
import typer

from vmvault import testdisk
from vmvault.app.context import PASSPHRASE_ENV, Context
from vmvault.app.restore import run_restore
from vmvault.app.vaults import init_vault, run_check
from vmvault.app.vm_backup import run_vm_backup
from vmvault.cli.options import JsonOpt
from vmvault.cli.output import console, emit_json, guarded, human_bytes
from vmvault.errors import UsageError, VmvaultError
from vmvault.inventory import load_inventory

DEMO_PASSPHRASE = "vmvault-demo-passphrase"


def file_digest(path: Path) -> str:
    """BLAKE3 of a file's logical content, reading holes as zeros (they are part of the disk)."""
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(16 << 20)
        view = memoryview(buf)
        while n := f.readinto(view):
            hasher.update(view[:n])
    return str(hasher.hexdigest())


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


class DemoFailed(VmvaultError):
    code = "demo_failed"


def demo_cmd(
    workdir: str = typer.Option("demo-out", "--workdir", help="Where the demo puts its files."),
    size: str = typer.Option("1G", "--size", help="Size of the generated disk."),
    percent: float = typer.Option(1.0, "--percent", help="Share of the disk changed between."),
    json: bool = JsonOpt,
) -> None:
    """Back up a generated VM disk, change it, back it up again, restore and verify both."""

    def act() -> dict[str, Any]:
        try:
            disk_size = testdisk.parse_size(size)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        return run_demo(Path(workdir), disk_size, percent, quiet=json)

    summary = guarded(json, act)
    if json:
        emit_json(summary)


def _write_vm(work: Path, size: int, say: Callable[[str], None]) -> Path:
    """A VM with an OS disk (raw), a data disk (qcow2) and a temporary disk, its pre/post
    scripts, and the inventory declaring it. Returns the inventory's path."""
    disks = work / "disks"
    disks.mkdir()
    os_disk = disks / "web01-os.img"
    stats = testdisk.create_disk(os_disk, size, seed=1)
    say(f"    os disk {os_disk.name}: {human_bytes(size)}, {human_bytes(stats.written)} written")
    raw_data = disks / "data.raw"
    testdisk.create_disk(raw_data, max(size // 4, 4 * testdisk.MiB), seed=7)
    data_disk = disks / "web01-data.qcow2"
    subprocess.run(
        ["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw_data), str(data_disk)],
        check=True,
    )
    raw_data.unlink()
    say(f"    data disk {data_disk.name}: qcow2")
    temp_disk = disks / "web01-resource.img"
    with open(temp_disk, "wb") as f:
        f.truncate(64 * testdisk.MiB)
        f.write(b"swap and scratch space " * 4096)
    say(f"    temporary disk {temp_disk.name}: never backed up")
    state, scripts = "stopped", ""
    if os.geteuid() == 0:  # the scripts must be root-owned (they would run as root)
        log = work / "scripts.log"
        for name, line in (("pre", "application quiesced"), ("post", "application resumed")):
            script = work / f"{name}.sh"
            script.write_text(f"#!/bin/sh\necho '{name}-script: {line}' >> {log}\n")
            script.chmod(0o700)
        config = work / "VMSnapshotScriptPluginConfig.json"
        config.write_text(
            json.dumps(
                {
                    "pluginName": "ScriptRunner",
                    "preScriptLocation": str(work / "pre.sh"),
                    "postScriptLocation": str(work / "post.sh"),
                    "timeoutInSeconds": 30,
                    "continueBackupOnFailure": True,
                    "fsFreezeEnabled": True,
                },
                indent=2,
            )
        )
        config.chmod(0o600)
        state, scripts = "running", f'scripts = "{config}"\nsnapshot = "copy"\n'
    inventory = work / "inventory.toml"
    inventory.write_text(f"""[limits]
disk_mb_per_s = 2000   # a local demo: the seed's 60 MB/s per disk would only slow it down

[pools.local-ssd]
egress_mb_per_s = 480

[[vms]]
name = "web01"
state = "{state}"
{scripts}
  [[vms.disks]]
  name = "os"
  path = "{os_disk}"
  role = "os"
  pool = "local-ssd"

  [[vms.disks]]
  name = "data"
  path = "{data_disk}"
  format = "qcow2"
  pool = "local-ssd"

  [[vms.disks]]
  name = "resource"
  path = "{temp_disk}"
  role = "temporary"
""")
    return inventory


def run_demo(work: Path, size: int, percent: float, *, quiet: bool = False) -> dict[str, Any]:
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    work = work.absolute()
    if not os.environ.get(PASSPHRASE_ENV):
        os.environ[PASSPHRASE_ENV] = DEMO_PASSPHRASE
    ctx = Context(str(work / "vault"), f"sqlite:///{work / 'catalog.db'}")
    summary: dict[str, Any] = {"workdir": str(work), "disk_size": size, "points": []}

    def say(text: str) -> None:
        if not quiet:
            console.print(text, highlight=False)

    def step(text: str) -> float:
        say(f"[bold cyan]==>[/] {text}")
        return time.perf_counter()

    step("making a VM: an OS disk, a data disk and a temporary disk, with pre/post scripts")
    inventory = load_inventory(_write_vm(work, size, say))
    vm = inventory.vm("web01")
    image = Path(vm.disks[0].path)
    data_image = Path(vm.disks[1].path)
    digests = [file_digest(image)]

    step(f"creating an encrypted vault at {ctx.vault_path}")
    vault = init_vault(ctx)
    say(f"    vault {vault.config.vault_id}, AES-256-GCM, scrypt-wrapped key")

    points = []
    for round_no in (1, 2):
        if round_no == 2:
            step(f"the guest writes: {percent} % of the OS disk in scattered 64 KiB writes")
            mutation = testdisk.mutate_disk(image, percent)
            say(f"    {mutation.writes} writes, {human_bytes(mutation.bytes_written)}")
            digests.append(file_digest(image))
        t = step("backing up web01 (full)" if round_no == 1 else "backing up web01 again")
        point = run_vm_backup(ctx, inventory, "web01")
        seconds = time.perf_counter() - t
        level = point["consistency"]
        summary["points"].append(
            {
                "id": point["id"],
                "type": point["type"],
                "consistency": level,
                "seconds": round(seconds, 3),
                "disks": {d["name"]: d["stats"] for d in point["disks"]},
            }
        )
        say(
            f"    point {point['id']} ({point['type']}) in {seconds:.2f} s, "
            f"[bold]{level['level']}-consistent[/]: {level['reason']}"
        )
        for d in point["disks"]:
            st = d["stats"]
            say(
                f"      {d['name']:4} read {human_bytes(st['read'])}, changed "
                f"{human_bytes(st['changed'])}, new {human_bytes(st['new'])}, written "
                f"{human_bytes(st['stored'])}"
            )
        for excluded in point.get("excluded", []):
            say(f"      {excluded['name']} excluded: {excluded['reason']}")
        points.append(point["id"])

    for point_id, digest in zip(points, digests, strict=True):
        target = work / f"restored-os-{point_id}.img"
        step(f"restoring the OS disk of {point_id}")
        report = run_restore(ctx, point_id, str(target), disk="os")
        got = file_digest(target)
        say(
            f"    {human_bytes(report.bytes_verified)} verified chunk by chunk in "
            f"{report.seconds:.2f} s; sparse: {human_bytes(allocated(target))} allocated "
            f"of {human_bytes(size)}"
        )
        if got != digest:
            raise DemoFailed(f"restored image of {point_id} differs from the original")
        summary.setdefault("restores", []).append(
            {
                "point": point_id,
                "disk": "os",
                "identical": True,
                "seconds": round(report.seconds, 3),
            }
        )
        say(f"    [green]byte-identical[/] to the disk at backup time (BLAKE3 {got[:16]}…)")

    step(f"restoring the data disk of {points[-1]} as qcow2")
    data_out = work / "restored-data.qcow2"
    run_restore(ctx, points[-1], str(data_out), disk="data", target_format="qcow2")
    same = subprocess.run(
        ["qemu-img", "compare", str(data_image), str(data_out)],
        capture_output=True,
        text=True,
        check=False,
    )
    if same.returncode != 0:
        raise DemoFailed(f"restored data disk differs: {same.stdout.strip()}")
    summary["restores"].append({"point": points[-1], "disk": "data", "identical": True})
    say("    [green]identical[/] as the guest sees it (qemu-img compare)")

    step("checking the whole vault")
    check = run_check(ctx, read_data=True)
    if not check.ok:
        raise DemoFailed(
            "vault check found errors: " + "; ".join(p.message for p in check.problems)
        )
    say(
        f"    {check.packs} packs, {check.chunks} chunks, {check.points} points: "
        f"[green]consistent[/]"
    )
    du = sum(f.stat().st_size for f in (work / "vault").rglob("*") if f.is_file())
    summary["vault_bytes"] = du
    say(
        f"[bold green]demo complete[/]: the vault holds {human_bytes(du)} for 2 recovery "
        f"points of web01; files in {work}"
    )
    return summary
