"""Time from `vmvault vm instant-restore` to the recovered guest's first console line.

    .venv/bin/python bench/instant_boot.py --reps 3            # TCG (KVM: --accel kvm)

The guest is the tests' (tests/support/bootguest.py): Debian's kernel booted directly, its
root an ext4 disk holding a static busybox, an ``/init`` and a marker file. The disk is
backed up into a fresh vault once; then, per repetition, the real command boots the point
(NBD exports, a qcow2 overlay, QEMU) and the console log is watched every 10 ms from the
moment the command starts:

- ``returned``: the command is back (exports answering, overlay made, QEMU's CPUs running);
- ``first line``: the guest's first complete line on its serial console (the kernel's);
- ``marker``: the guest printed the marker file it read from its disk, i.e. it booted from
  the vault through NBD into its own userspace.

The VM is discarded (``--stop``) after each repetition. Each repetition also boots the
same guest from the raw disk file itself (plain QEMU, the same machine, no vmvault): the
difference is what booting from the vault costs. Results: medians and every repetition, in
bench/results/instant_boot.{json,md} (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

from support import bootguest  # noqa: E402
from vmvault.app.backup import run_backup  # noqa: E402
from vmvault.app.context import PASSPHRASE_ENV, Context  # noqa: E402
from vmvault.app.disks import DiskSpec  # noqa: E402
from vmvault.app.vaults import init_vault  # noqa: E402

POLL = 0.01
TIMEOUT = 300.0


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from vmvault.cli.main import run; run()", *args],
        capture_output=True,
        text=True,
        env=env,
    )


def one_boot(
    vault: str, storage: Path, accel: str, marker: str, env: dict[str, str]
) -> dict[str, float]:
    kernel, initrd = bootguest.assets()
    name = f"bench-{secrets.token_hex(3)}"
    argv = [
        sys.executable, "-c", "from vmvault.cli.main import run; run()",
        "vm", "instant-restore", "guest01", "--as", name, "--storage", str(storage),
        "--kernel", str(kernel), "--initrd", str(initrd), "--append", bootguest.APPEND,
        "--accel", accel, "--memory", "256", "--vault", vault, "--json",
    ]  # fmt: skip
    began = time.monotonic()
    command = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    times: dict[str, float] = {}
    console: Path | None = None
    try:
        while time.monotonic() - began < TIMEOUT:
            if "returned" not in times and command.poll() is not None:
                times["returned"] = time.monotonic() - began
                out, err = command.communicate()
                if command.returncode != 0:
                    raise SystemExit(f"instant-restore failed: {err.strip()}")
                console = Path(json.loads(out)["state"]) / "console.log"
            if console is None:
                console = _console_while_starting(env, name)
            text = console.read_text(errors="replace") if console and console.exists() else ""
            if "first line" not in times and "\n" in text:
                times["first line"] = time.monotonic() - began
            if f"marker: {marker}" in text:
                times["marker"] = time.monotonic() - began
                if "returned" in times:
                    return times
            time.sleep(POLL)
        raise SystemExit(f"no marker on the console within {TIMEOUT:.0f} s")
    finally:
        if command.poll() is None:
            command.wait()
        cli("vm", "instant-restore", "--stop", name, env=env)


def plain_boot(disk: Path, accel: str, marker: str, work: Path) -> float:
    """Seconds from QEMU's start to the marker, booting the disk file itself (changes
    discarded: ``snapshot=on``), on the machine instant-restore gives the guest."""
    kernel, initrd = bootguest.assets()
    console = work / "plain-console.log"
    console.unlink(missing_ok=True)
    began = time.monotonic()
    qemu = subprocess.Popen(
        [
            "qemu-system-x86_64", "-nodefaults", "-display", "none", "-vga", "std",
            "-machine", f"q35,accel={accel}", "-cpu", "host" if accel == "kvm" else "max",
            "-m", "256", "-serial", f"file:{console}", "-nic", "none",
            "-kernel", str(kernel), "-initrd", str(initrd), "-append", bootguest.APPEND,
            "-drive", f"file={disk},format=raw,if=virtio,snapshot=on",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        while time.monotonic() - began < TIMEOUT:
            if console.exists() and f"marker: {marker}" in console.read_text(errors="replace"):
                return time.monotonic() - began
            time.sleep(POLL)
        raise SystemExit(f"the plain boot printed no marker within {TIMEOUT:.0f} s")
    finally:
        qemu.kill()
        qemu.wait()


def _console_while_starting(env: dict[str, str], name: str) -> Path | None:
    """The console log exists before the command returns (QEMU writes it from its start):
    its folder is the instant VMs' own, named after the VM."""
    path = Path(env["VMVAULT_INSTANT_DIR"]) / name / "console.log"
    return path if path.exists() else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--accel", default="tcg", choices=("tcg", "kvm"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="vib-"))  # short: sockets' paths live under it
    try:
        return measure(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(args: argparse.Namespace, work: Path) -> int:
    env = {
        **os.environ,
        PASSPHRASE_ENV: os.environ.get(PASSPHRASE_ENV, "bench passphrase"),
        "VMVAULT_EXPORT_DIR": str(work / "x"),
        "VMVAULT_INSTANT_DIR": str(work / "v"),
        "VMVAULT_CACHE_DIR": str(work / "cache"),
        "PYTHONPATH": str(ROOT / "src"),
    }
    os.environ.update({k: env[k] for k in (PASSPHRASE_ENV, "VMVAULT_CACHE_DIR")})
    marker = f"marker-{secrets.token_hex(6)}"
    disk = bootguest.make_disk(work / "guest.img", marker)
    bootguest.assets()  # built before anything is timed
    ctx = Context(str(work / "vault"), f"sqlite:///{work / 'catalog.db'}")
    init_vault(ctx)
    run_backup(ctx, "guest01", [DiskSpec("os", str(disk), role="os")])

    reps = []
    for rep in range(args.reps):
        times = one_boot(ctx.vault_path, work / f"storage{rep}", args.accel, marker, env)
        times["plain boot"] = plain_boot(disk, args.accel, marker, work)
        print(f"rep {rep + 1}: " + ", ".join(f"{k} {v:.2f} s" for k, v in times.items()))
        reps.append(times)
    medians = {k: statistics.median(r[k] for r in reps) for k in reps[0]}
    load = os.getloadavg()
    doc: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "accel": args.accel,
        "reps": reps,
        "medians": medians,
        "load_average": load,
        "cpus": os.cpu_count(),
        "command": " ".join(["bench/instant_boot.py", *sys.argv[1:]]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "instant_boot.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = [
        f"# Instant VM recovery: command to the guest's console ({doc['date']})",
        "",
        f"`{doc['command']}`, accel {args.accel}, {os.cpu_count()} CPUs, load average "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} at the end.",
        "",
        "| rep | command returned | first console line | marker read from the disk "
        "| plain QEMU from the disk file: marker |",
        "|---|---|---|---|---|",
        *(
            f"| {i + 1} | {r['returned']:.2f} s | {r['first line']:.2f} s | {r['marker']:.2f} s "
            f"| {r['plain boot']:.2f} s |"
            for i, r in enumerate(reps)
        ),
        f"| median | {medians['returned']:.2f} s | {medians['first line']:.2f} s "
        f"| {medians['marker']:.2f} s | {medians['plain boot']:.2f} s |",
    ]
    (args.out / "instant_boot.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
