"""Live backups of a running QEMU VM through QMP, with persistent dirty bitmaps.

A reflink or a copy of a running VM's image file is not a point in time of what the guest
sees: QEMU caches qcow2 metadata and writes it back when it likes. So the VM's own QEMU
takes the snapshot: one QMP ``transaction`` starts a ``blockdev-backup`` job per disk, all at
the same instant, into new qcow2 files (copy-before-write: guest writes after that instant
wait until the old data is in the target). Once the jobs are done the targets are detached
from the VM, and vmvault reads them like any qcow2 image (``formats()``), through
``disks.qemu.fuse_export``.

Change tracking, per disk
-------------------------
Every snapshot gets a fresh *generation* id ``G``. In the same transaction a dirty bitmap
named ``<bitmap_name>-G`` is added to the disk's node (persistent in qcow2 images, so it
survives a clean restart of QEMU): it records every guest write after the instant of ``G``.
The recovery point stores ``G`` (``generation()``); the next backup passes it back as
``parent_generation``.

* First backup, or no usable bitmap ``<bitmap_name>-<parent_generation>``: ``sync=full``
  into the target; ``changed()`` is None for that disk (read everything), and ``notes()``
  says why (missing: a new disk, or QEMU restarted without saving its bitmaps; disabled;
  inconsistent: QEMU was killed; or no parent generation given).
* Otherwise: ``sync=bitmap`` with ``bitmap-mode=never`` from the parent's bitmap. The
  target then holds exactly the clusters written since the parent's instant; everywhere
  else it is unallocated. Its allocation map (``qemu-img map``, including clusters written
  as zeros) is ``changed()``; the engine takes every other chunk from the parent point.
  **Such a target is a delta, not a disk**: it must only be read together with its change
  ranges, against the point whose generation is ``parent_generation``.

Nothing is ever cleared, merged or renamed: a bitmap named after its generation covers
"everything since that point" for as long as it exists, so

* ``commit()`` (after the recovery point is durable) removes this prefix's other bitmaps:
  ``<bitmap_name>-G`` alone remains, for the next backup;
* without ``commit()`` (any failure), ``release()`` removes ``<bitmap_name>-G`` and the
  parent's bitmap is untouched and still recording: the next backup against the last
  committed point sees every write since then, before and after the failed attempt;
* if the process dies between the point's commit and ``commit()``, both bitmaps remain;
  the next backup names the newer parent, uses its bitmap, and its ``commit()`` removes
  the older one. A bitmap of another point is never used by mistake: the name says whose
  it is.

Two vaults backing up the same VM must use different ``bitmap_name`` prefixes, or each
would remove the other's bitmaps.

QEMU is handed the target files as file descriptors (``add-fd``), so it needs no access to
vmvault's working directory (QEMU often runs as another user, or confined). The targets
live next to each disk unless ``workdir`` is given: a full read needs room for the disk's
data, an incremental for the changed clusters only. QEMU 7.2 closes a removed descriptor
only while the VM runs, so a paused VM holds a released target's space until it resumes.
The QMP monitor serves one client at a time: it is held from ``start`` to the end of
``wait`` and briefly by ``commit``/``release``, not while vmvault reads the targets.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vmvault.disks.qemu import QemuError, create_image
from vmvault.snapshot.base import SnapshotError
from vmvault.snapshot.qemu_blocks import (
    allocated_ranges,
    bitmap_of,
    find_node,
    format_bytes,
    judge_bitmap,
)
from vmvault.snapshot.qmp_client import DEFAULT_TIMEOUT, QmpConnection, QmpError

_POLL_FIRST = 0.02
_POLL_MAX = 0.5


@dataclass
class _Disk:
    """One disk of the VM during one snapshot."""

    path: str  # the disk image as the caller named it
    node: str  # the format node the guest writes through
    size: int
    persistent: bool  # qcow2: the bitmap is saved in the image
    parent_bitmap: str | None  # usable bitmap of the parent point (incremental), or None
    note: str
    directory: Path | None = None
    target: Path | None = None
    target_node: str | None = None
    target_attached: bool = False
    fdset: int | None = None
    job: str | None = None
    job_concluded: bool = False
    changed: list[tuple[int, int]] | None = None
    extra_notes: list[str] = field(default_factory=list)


def new_generation() -> str:
    """A sortable, unique id for a snapshot instant (also part of a bitmap's name)."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


class QemuLiveSnapshot:
    """Point-in-time images of a running QEMU VM's disks, with dirty-bitmap change hints.

    ``take`` = ``start`` (the QMP transaction: instant, run it while the guest is frozen)
    + ``wait`` (the copy jobs: as long as the data takes, better after the thaw).
    """

    name = "qemu-live"

    def __init__(
        self,
        qmp_socket: str,
        *,
        bitmap_name: str = "vmvault",
        parent_generation: str | None = None,
        workdir: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.qmp_socket = qmp_socket
        self.bitmap_name = bitmap_name
        self.parent_generation = parent_generation
        self.workdir = workdir
        self.timeout = timeout
        self._qmp: QmpConnection | None = None
        self._disks: list[_Disk] = []
        self._generation: str | None = None
        self._tag = ""  # short id for job and node names (QEMU allows 31 characters)
        self._started = False
        self._waited = False
        self._committed = False
        self._released = False
        self._bitmaps_added = False

    # -- the provider interface ------------------------------------------------------------

    def take(self, paths: Sequence[str]) -> list[str]:
        """Snapshot every disk at one instant and wait for the copies; see ``start``."""
        images = self.start(paths)
        try:
            self.wait()
        except BaseException:
            self.release()
            raise
        return images

    def start(self, paths: Sequence[str]) -> list[str]:
        """Start the backup jobs of all ``paths`` in one transaction; return the targets.

        The targets are complete only after ``wait``. On failure nothing is left behind.
        """
        if self._started:
            raise SnapshotError("this qemu-live snapshot was already taken; make a new one")
        if not paths:
            raise SnapshotError("no disks to snapshot")
        self._started = True
        try:
            self._connection()
            self._generation = new_generation()
            self._tag = "vmv" + secrets.token_hex(4)
            self._disks = self._inspect(paths)
            for index, disk in enumerate(self._disks):
                self._attach_target(index, disk)
            self._transaction()
        except BaseException:
            self.release()
            raise
        return [str(d.target) for d in self._disks]

    def wait(self) -> None:
        """Wait for every copy job, detach the targets, and read the change ranges."""
        if self._waited:
            return
        if not self._started or self._released:
            raise SnapshotError("no snapshot in progress (not started, or already released)")
        qmp = self._connection()
        delay = _POLL_FIRST
        pending = [d for d in self._disks if not d.job_concluded]
        while pending:
            jobs = {j["id"]: j for j in qmp.execute("query-jobs")}
            for disk in pending:
                job = jobs.get(disk.job)
                if job is None:
                    disk.job_concluded = True
                    raise SnapshotError(f"QEMU's backup job of {disk.path} disappeared")
                if job["status"] == "concluded":
                    disk.job_concluded = True
                    qmp.execute("job-dismiss", {"id": disk.job})
                    if "error" in job:
                        raise SnapshotError(f"QEMU's backup of {disk.path} failed: {job['error']}")
            pending = [d for d in pending if not d.job_concluded]
            if pending:
                time.sleep(delay)
                delay = min(delay * 1.5, _POLL_MAX)
        for disk in self._disks:
            # Detached, the target's metadata is flushed and its lock released, so another
            # process may read it.
            self._detach_target(disk)
        for disk in self._disks:
            if disk.parent_bitmap is not None:
                assert disk.target is not None
                disk.changed = allocated_ranges(disk.target)
                total = sum(hi - lo for lo, hi in disk.changed)
                disk.note = (
                    f"dirty bitmap {disk.parent_bitmap!r} used: "
                    f"{len(disk.changed)} ranges, {format_bytes(total)}"
                )
        self._waited = True
        self._disconnect()  # the monitor is free for others while the data is read

    def formats(self) -> list[str]:
        """The image format of each returned image (QEMU writes qcow2)."""
        return ["qcow2" for _ in self._disks]

    def changed(self) -> list[list[tuple[int, int]] | None]:
        """Per disk: the byte ranges written since the parent point, or None: read all."""
        if self._started and not self._waited:
            self.wait()
        return [None if d.changed is None else list(d.changed) for d in self._disks]

    def notes(self) -> list[str]:
        """Per disk: how it was taken and why (for the point's metadata and the job log)."""
        return ["; ".join([d.note, *d.extra_notes]) for d in self._disks]

    def generation(self) -> str:
        """This snapshot's id: store it in the point; pass it back as ``parent_generation``."""
        if self._generation is None:
            raise SnapshotError("no snapshot taken yet: no generation")
        return self._generation

    def commit(self) -> None:
        """The point is durable: keep this snapshot's bitmaps, drop the older ones.

        Best effort: a bitmap left behind is removed by the next commit, and it is never
        taken for another point's (its name says whose it is).
        """
        if not self._waited or self._released:
            raise SnapshotError("commit needs a complete snapshot that was not released yet")
        self._committed = True
        keep = self._bitmap(self.generation())
        try:
            qmp = self._connection()
            nodes = {n["node-name"]: n for n in qmp.execute("query-named-block-nodes")}
        except QmpError as exc:
            for disk in self._disks:
                disk.extra_notes.append(f"old bitmaps not removed: {exc.message}")
            return
        for disk in self._disks:
            for bitmap in nodes.get(disk.node, {}).get("dirty-bitmaps", []):
                name = bitmap["name"]
                if self._ours(name) and name != keep:
                    try:
                        qmp.execute("block-dirty-bitmap-remove", {"node": disk.node, "name": name})
                    except QmpError as exc:
                        disk.extra_notes.append(f"old bitmap {name!r} not removed: {exc.message}")
        self._disconnect()

    def release(self) -> None:
        """Remove target nodes, jobs and files; drop this snapshot's bitmaps unless committed.

        Always safe to call, also after a failure half-way or when QEMU is gone.
        """
        self._released = True
        drop_bitmap = self._bitmaps_added and not self._committed
        attached = any(d.target_attached or d.fdset is not None for d in self._disks)
        running = any(d.job is not None and not d.job_concluded for d in self._disks)
        try:
            if drop_bitmap or attached or running:
                qmp = self._connection()
                self._cancel_jobs(qmp)
                for disk in self._disks:
                    self._detach_target(disk, quiet=True)
                if drop_bitmap:
                    name = self._bitmap(self.generation())
                    for disk in self._disks:
                        # If this fails, QEMU is gone, and its unsaved bitmap with it.
                        with contextlib.suppress(QmpError):
                            qmp.execute(
                                "block-dirty-bitmap-remove", {"node": disk.node, "name": name}
                            )
                    self._bitmaps_added = False
        except QmpError:
            pass  # QEMU is gone: so are its jobs, nodes and unsaved bitmaps
        finally:
            self._disconnect()
        for disk in self._disks:
            if disk.directory is not None:
                shutil.rmtree(disk.directory, ignore_errors=True)
                disk.directory = None

    # -- inside ----------------------------------------------------------------------------

    def _connection(self) -> QmpConnection:
        """The QMP session, opened when needed: it is held only while QEMU works for us."""
        if self._qmp is None:
            self._qmp = QmpConnection(self.qmp_socket, timeout=self.timeout)
        return self._qmp

    def _disconnect(self) -> None:
        qmp, self._qmp = self._qmp, None
        if qmp is not None:
            qmp.close()

    def _bitmap(self, generation: str) -> str:
        return bitmap_of(self.bitmap_name, generation)

    def _ours(self, name: str) -> bool:
        return name.startswith(f"{self.bitmap_name}-")

    def _inspect(self, paths: Sequence[str]) -> list[_Disk]:
        """Find each disk's node and decide, from its bitmaps, full or incremental."""
        qmp = self._connection()
        devices = qmp.execute("query-block")
        nodes = qmp.execute("query-named-block-nodes", {"flat": True})
        disks: list[_Disk] = []
        for path in paths:
            node = find_node(path, devices, nodes)
            if any(d.node == node["node-name"] for d in disks):
                raise SnapshotError(f"{path} is given twice (node {node['node-name']})")
            parent_bitmap, note = judge_bitmap(
                node.get("dirty-bitmaps", []), path, self.bitmap_name, self.parent_generation
            )
            disks.append(
                _Disk(
                    path=path,
                    node=node["node-name"],
                    size=int(node["image"]["virtual-size"]),
                    persistent=node.get("drv") == "qcow2",
                    parent_bitmap=parent_bitmap,
                    note=note,
                )
            )
        return disks

    def _attach_target(self, index: int, disk: _Disk) -> None:
        """Create the target qcow2 and make it a node of the VM, passed as a descriptor."""
        qmp = self._connection()
        base = Path(self.workdir) if self.workdir else Path(disk.path).parent
        # Next to the disk by default: its file system was sized for the VM's data.
        disk.directory = Path(tempfile.mkdtemp(prefix=".vmvault-qemu-", dir=base))
        disk.target = disk.directory / f"{index}-{Path(disk.path).stem}.qcow2"
        try:
            create_image(disk.target, "qcow2", disk.size)
        except QemuError as exc:
            raise SnapshotError(exc.message) from None
        fd = os.open(disk.target, os.O_RDWR | os.O_CLOEXEC)
        try:
            qmp.send_fd(fd)
            added = qmp.execute("add-fd", {"opaque": f"vmvault {disk.target}"})
        finally:
            os.close(fd)  # QEMU holds its own copy now
        disk.fdset = int(added["fdset-id"])
        disk.target_node = f"{self._tag}t{index}"
        qmp.execute(
            "blockdev-add",
            {
                "driver": "qcow2",
                "node-name": disk.target_node,
                "file": {"driver": "file", "filename": f"/dev/fdset/{disk.fdset}"},
            },
        )
        disk.target_attached = True

    def _transaction(self) -> None:
        """One point in time for every disk: bitmaps added and copies started together."""
        qmp = self._connection()
        actions: list[dict[str, Any]] = []
        new_bitmap = self._bitmap(self.generation())
        for index, disk in enumerate(self._disks):
            disk.job = f"{self._tag}j{index}"
            actions.append(
                {
                    "type": "block-dirty-bitmap-add",
                    "data": {"node": disk.node, "name": new_bitmap, "persistent": disk.persistent},
                }
            )
            backup: dict[str, Any] = {
                "job-id": disk.job,
                "device": disk.node,
                "target": disk.target_node,
                "sync": "full",
                "auto-dismiss": False,  # a concluded job keeps its error until dismissed
            }
            if disk.parent_bitmap is not None:
                backup |= {"sync": "bitmap", "bitmap": disk.parent_bitmap, "bitmap-mode": "never"}
            actions.append({"type": "blockdev-backup", "data": backup})
        try:
            qmp.execute("transaction", {"actions": actions})
        except QmpError as exc:
            for disk in self._disks:
                disk.job_concluded = True  # nothing was started
            raise SnapshotError(f"QEMU refused the snapshot: {exc.message}") from None
        self._bitmaps_added = True

    def _cancel_jobs(self, qmp: QmpConnection) -> None:
        running = [d for d in self._disks if d.job is not None and not d.job_concluded]
        for disk in running:
            with contextlib.suppress(QmpError):  # fails if it is concluding already
                qmp.execute("job-cancel", {"id": disk.job})
        deadline = time.monotonic() + self.timeout
        while running and time.monotonic() < deadline:
            try:
                jobs = {j["id"]: j for j in qmp.execute("query-jobs")}
            except QmpError:
                return
            for disk in running:
                job = jobs.get(disk.job)
                if job is None or job["status"] == "concluded":
                    disk.job_concluded = True
                    if job is not None:
                        with contextlib.suppress(QmpError):
                            qmp.execute("job-dismiss", {"id": disk.job})
            running = [d for d in running if not d.job_concluded]
            if running:
                time.sleep(0.05)

    def _detach_target(self, disk: _Disk, *, quiet: bool = False) -> None:
        qmp = self._connection()
        try:
            if disk.target_attached:
                qmp.execute("blockdev-del", {"node-name": disk.target_node})
                disk.target_attached = False
            if disk.fdset is not None:
                qmp.execute("remove-fd", {"fdset-id": disk.fdset})
                disk.fdset = None
        except QmpError:
            if not quiet:
                raise
