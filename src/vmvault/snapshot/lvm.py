"""LVM snapshots: a disk that is a logical volume gets a copy-on-write snapshot volume.

``lvcreate --snapshot`` is instant whatever the size, so it is taken while the VM is
quiesced; the snapshot needs room for the writes the guest makes during the transfer
(``cow_percent`` of the origin). If the guest writes more, LVM invalidates the snapshot and
reads of it fail: the backup then fails (it never stores a torn image), and ``release``
checks the snapshot's state so the job says why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

from vmvault.snapshot.base import SnapshotError

LVM_TIMEOUT = 60.0


def _lvm(*args: str) -> str:
    tool = shutil.which(args[0])
    if tool is None:
        raise SnapshotError(f"{args[0]} not found: install lvm2 to snapshot logical volumes")
    try:
        done = subprocess.run(
            [tool, *args[1:]],
            capture_output=True,
            text=True,
            timeout=LVM_TIMEOUT,
            check=False,
            env={**os.environ, "LVM_SUPPRESS_FD_WARNINGS": "1"},
        )
    except subprocess.TimeoutExpired:
        raise SnapshotError(f"{' '.join(args[:2])} did not answer in {LVM_TIMEOUT:.0f} s") from None
    if done.returncode != 0:
        message = (done.stderr.strip() or done.stdout.strip()).splitlines()
        raise SnapshotError(f"{' '.join(args[:2])} failed: {message[-1] if message else '?'}")
    return done.stdout


def logical_volume(path: str) -> tuple[str, str]:
    """The (volume group, logical volume) a device path is, or a clear error."""
    out = _lvm("lvs", "--noheadings", "--separator", "/", "-o", "vg_name,lv_name", path)
    parts = out.strip().split("/")
    if len(parts) != 2 or not all(parts):
        raise SnapshotError(f"{path} is not an LVM logical volume")
    return parts[0].strip(), parts[1].strip()


@dataclass
class LvmSnapshot:
    """Snapshot volumes named ``<lv>-vmvault-<random>``, removed by ``release``."""

    cow_percent: int = 20
    name: str = "lvm"
    _made: list[tuple[str, str]] = field(default_factory=list)

    def take(self, paths: Sequence[str]) -> list[str]:
        images = []
        try:
            for path in paths:
                vg, lv = logical_volume(path)
                snap = f"{lv}-vmvault-{os.urandom(4).hex()}"
                _lvm(
                    "lvcreate",
                    "--snapshot",
                    "--name",
                    snap,
                    "--extents",
                    f"{self.cow_percent}%ORIGIN",
                    f"{vg}/{lv}",
                )
                self._made.append((vg, snap))
                images.append(f"/dev/{vg}/{snap}")
        except BaseException:
            self.release()
            raise
        return images

    def invalid(self) -> list[str]:
        """Snapshots LVM invalidated because the guest wrote more than their room."""
        bad = []
        for vg, snap in self._made:
            attrs = _lvm("lvs", "--noheadings", "-o", "lv_attr", f"{vg}/{snap}").strip()
            # lv_attr's 5th character is the state: "I" = invalid snapshot.
            if len(attrs) >= 5 and attrs[4] == "I":
                bad.append(f"{vg}/{snap}")
        return bad

    def release(self) -> None:
        errors = []
        for vg, snap in reversed(self._made):
            try:
                _lvm("lvremove", "--yes", f"{vg}/{snap}")
            except SnapshotError as exc:
                errors.append(str(exc))
        self._made.clear()
        if errors:
            raise SnapshotError("; ".join(errors))
