"""`vmvault demo`: the main job end to end on a generated disk, saying what it does.

Generate a VM-like disk, back it up, change 1 % of it, back it up again (incremental),
restore both recovery points and prove each byte-identical to the image it came from.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import blake3
import typer

from vmvault import service, testdisk
from vmvault.cli.output import console, emit_json, guarded, human_bytes
from vmvault.errors import UsageError, VmvaultError

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
    json: bool = typer.Option(False, "--json", help="Print one JSON document instead of text."),
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


def run_demo(work: Path, size: int, percent: float, *, quiet: bool = False) -> dict[str, Any]:
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    if not os.environ.get(service.PASSPHRASE_ENV):
        os.environ[service.PASSPHRASE_ENV] = DEMO_PASSPHRASE
    ctx = service.Context(str(work / "vault"), f"sqlite:///{(work / 'catalog.db').absolute()}")
    image = work / "web01-os.img"

    summary: dict[str, Any] = {"workdir": str(work), "disk_size": size, "points": []}

    def say(text: str) -> None:
        if not quiet:
            console.print(text)

    def step(text: str) -> float:
        say(f"[bold cyan]==>[/] {text}")
        return time.perf_counter()

    t = step(f"generating a {human_bytes(size)} VM disk image at {image}")
    stats = testdisk.create_disk(image, size)
    say(
        f"    {human_bytes(stats.written)} written in {stats.extents} extents "
        f"(the rest are holes), {time.perf_counter() - t:.1f} s"
    )
    digests = [file_digest(image)]

    step(f"creating an encrypted vault at {ctx.vault_path}")
    vault = service.init_vault(ctx)
    say(f"    vault {vault.config.vault_id}, AES-256-GCM, scrypt-wrapped key")

    points = []
    for round_no in (1, 2):
        if round_no == 2:
            t = step(f"changing {percent} % of the disk in scattered 64 KiB writes")
            mutation = testdisk.mutate_disk(image, percent)
            say(f"    {mutation.writes} writes, {human_bytes(mutation.bytes_written)}")
            digests.append(file_digest(image))
        t = step("backing up (full)" if round_no == 1 else "backing up again (incremental)")
        point = service.run_backup(ctx, "web01", [service.DiskSpec("os", str(image))])
        seconds = time.perf_counter() - t
        st = point["disks"][0]["stats"]
        summary["points"].append(
            {"id": point["id"], "type": point["type"], "seconds": round(seconds, 3), "stats": st}
        )
        say(
            f"    point {point['id']} ({point['type']}): read {human_bytes(st['read'])}, "
            f"changed {human_bytes(st['changed'])}, new {human_bytes(st['new'])}, "
            f"written {human_bytes(st['stored'])} in {seconds:.2f} s "
            f"({size / seconds / 1e6:.0f} MB/s of disk)"
        )
        points.append(point["id"])

    for point_id, digest in zip(points, digests, strict=True):
        target = work / f"restored-{point_id}.img"
        t = step(f"restoring {point_id} to {target}")
        report = service.run_restore(ctx, point_id, str(target))
        got = file_digest(target)
        say(
            f"    {human_bytes(report.bytes_verified)} verified chunk by chunk in "
            f"{report.seconds:.2f} s; sparse: {human_bytes(allocated(target))} allocated "
            f"of {human_bytes(size)}"
        )
        if got != digest:
            raise DemoFailed(f"restored image of {point_id} differs from the original")
        summary.setdefault("restores", []).append(
            {"point": point_id, "identical": True, "seconds": round(report.seconds, 3)}
        )
        say(f"    [green]byte-identical[/] to the image at backup time (BLAKE3 {got[:16]}…)")

    step("checking the whole vault")
    check = service.run_check(ctx, read_data=True)
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
        f"[bold green]demo complete[/]: vault holds {human_bytes(du)} for "
        f"2 points of a {human_bytes(size)} disk; files in {work}"
    )
    return summary
