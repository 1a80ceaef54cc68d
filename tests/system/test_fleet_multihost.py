"""A fleet as separate processes on this machine, three "hosts" sharing one vault directory:
PostgreSQL as the catalog, Redis as the broker, `vmvault scheduler` queueing the nightly
backups of 60 VMs whose disks lie on two pools, and `vmvault worker --host` for hv1 (two
of them), hv2 and hv3. The limits are checked from outside vmvault: a pool's disks in
flight from the workers' open files, its egress from the sectors its block device read
(each pool is a file system on a loop device of its own). One of hv1's workers is
SIGKILLed mid-backup and its job finished by the other; every backup succeeds, the vault
checks clean with its data read, and points restore byte for byte."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from support import pgkit
from support.cli import run_cli, same_content
from support.fleetkit import TIMINGS, Fleet, vm_entry, write_file
from vmvault import testdisk
from vmvault.app.context import Context
from vmvault.app.restore import run_restore
from vmvault.app.vaults import init_vault
from vmvault.catalog.models import Job
from vmvault.cluster.redis_limits import RedisGate
from vmvault.jobs.admission import Limits
from vmvault.jobs.queue import JobQueue
from vmvault.model.jobs import FINAL_STATES

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

MiB = testdisk.MiB
POOLS = ("a", "b")
HOSTS = ("hv1", "hv2", "hv3")
VMS = 60
MAX_VMS = 6
MAX_DISKS_PER_POOL = 3  # 3 + 3 disks fill the 6 VM places: each pool's cap is what binds
EGRESS_MB_PER_S = 2.0  # per pool, whoever reads it: far below what the CPUs could do
# The workers' timings: a lost job comes back within seconds, yet with leases and
# heartbeats long enough that a busy two-core machine does not lose a live job's place.
FLEET_TIMINGS = {
    **TIMINGS,
    "VMVAULT_STALE_AFTER_SECONDS": "6",
    "VMVAULT_LEASE_SECONDS": "5",
    # The jobs whose messages the killed worker held while they waited for their place are
    # queued, not running: the scheduler's sweep sends them again (the reaper brings back
    # the running ones).
    "VMVAULT_RESEND_AFTER_SECONDS": "10",
}
# A token take may go into debt, so a pool's bucket (budgets.py, redis_limits.py) lets
# through at most its depth, max(rate / 10, 4 MiB), plus the rate over any interval: the
# envelope checked below. Added to it, what the outside view cannot tell apart from vmvault's
# reads: a second of lag between a take and its read's completion (a busy machine), the
# kernel's readahead (128 KiB per disk in flight, set below) and ext4's own metadata.
BURST = max(EGRESS_MB_PER_S * 1e6 / 10, 4 * MiB)
ALLOWANCE = BURST + 1.0 * EGRESS_MB_PER_S * 1e6 + MAX_DISKS_PER_POOL * 128 * 1024 + MiB // 2
# A sampling sweep over the workers' open files slower than this may have seen one disk
# closed and another opened (a second job's admission, claim and vault session take longer
# than that): such a sweep counts nothing.
SWEEP_TRUSTED = 0.02


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    with pgkit.postgres_server() as url:  # make sysdeps installs PostgreSQL
        yield url


# -- a pool: an ext4 file system on a loop device, whose reads the kernel counts ---------------


@dataclass
class PoolDevice:
    name: str
    device: str  # /dev/loopN
    mount: Path

    def bytes_read(self) -> int:
        # /sys/block/loopN/stat: the third field is the sectors read (of 512 bytes)
        stat = Path(f"/sys/block/{Path(self.device).name}/stat").read_text().split()
        return int(stat[2]) * 512

    def remount(self) -> None:
        """Unmount and mount again: nothing of the file system is left in the page cache, so
        every read of its images from now on reaches the device."""
        _run("umount", str(self.mount))
        _run("mount", "-o", "noatime", self.device, str(self.mount))


def _run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout.strip()


@contextmanager
def _loop_file_system(base: Path, name: str) -> Iterator[PoolDevice]:
    backing = base / f"pool-{name}.fs"
    with open(backing, "wb") as f:
        f.truncate(256 * MiB)
    try:
        device = _run("losetup", "--find", "--show", str(backing))
    except RuntimeError as exc:
        # CI runs as root with util-linux: a missing loop device is a broken setup, not a skip
        pytest.fail(f"no loop device for a pool's file system ({exc})")
    mount = base / f"pool-{name}"
    mount.mkdir()
    try:
        # Readahead as on a usual disk (128 KiB): what the device reads is then what vmvault
        # read, give or take that much per open disk.
        _run("blockdev", "--setra", "256", device)
        _run("mkfs.ext4", "-q", "-b", "4096", "-O", "^has_journal", device)
        _run("mount", "-o", "noatime", device, str(mount))
        try:
            yield PoolDevice(name, device, mount)
        finally:
            if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "--lazy", str(mount)], capture_output=True)
    finally:
        subprocess.run(["losetup", "--detach", device], capture_output=True)
        backing.unlink()


@pytest.fixture
def pools(tmp_path: Path) -> Iterator[dict[str, PoolDevice]]:
    # `make test` runs as root after `make sysdeps`: anything missing here fails the test.
    if os.geteuid() != 0:
        pytest.fail("loop devices and mounts for the pools need root (make test runs as root)")
    for tool in ("losetup", "mkfs.ext4", "blockdev", "mount"):
        if shutil.which(tool) is None:
            pytest.fail(f"no {tool} (util-linux, e2fsprogs: make sysdeps installs them)")
    with ExitStack() as stack:
        yield {name: stack.enter_context(_loop_file_system(tmp_path, name)) for name in POOLS}


# -- the outside view ---------------------------------------------------------------------


@dataclass
class OutsideView:
    """Samples, from outside the workers, which pool images they hold open (every 50 ms,
    from /proc/PID/fd) and how many bytes each pool's device has read (every 100 ms)."""

    pools: dict[str, PoolDevice]
    vm_of: dict[str, str]  # image path -> its VM
    pids: list[int]
    disks_peak: dict[str, int] = field(default_factory=dict)
    vms_peak: int = 0
    sweeps: int = 0
    trusted_sweeps: int = 0
    reads: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self.disks_peak = dict.fromkeys(self.pools, 0)
        self.reads = {name: [] for name in self.pools}
        self._sample_reads()
        self._thread = threading.Thread(target=self._run, name="outside-view", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._sample_reads()

    def _run(self) -> None:
        tick = 0
        while not self._stop.wait(0.05):
            self._sample_open_files()
            tick += 1
            if tick % 2 == 0:
                self._sample_reads()

    def _sample_reads(self) -> None:
        now = time.monotonic()
        for name, pool in self.pools.items():
            self.reads[name].append((now, pool.bytes_read()))

    def _sample_open_files(self) -> None:
        started = time.monotonic()
        open_images: set[str] = set()
        for pid in self.pids:
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                continue  # the killed worker
            for fd in fds:
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue  # closed meanwhile
                if target in self.vm_of:
                    open_images.add(target)
        self.sweeps += 1
        if time.monotonic() - started > SWEEP_TRUSTED:
            return
        self.trusted_sweeps += 1
        for name, pool in self.pools.items():
            inside = sum(1 for path in open_images if Path(path).parent == pool.mount)
            self.disks_peak[name] = max(self.disks_peak[name], inside)
        self.vms_peak = max(self.vms_peak, len({self.vm_of[p] for p in open_images}))

    def read_bytes(self, pool: str) -> int:
        samples = self.reads[pool]
        return samples[-1][1] - samples[0][1]

    def envelope_excess(self, pool: str, rate: float) -> float:
        """The most bytes the pool's device read in any interval between two samples
        beyond ``rate`` times the interval's length (what a token bucket's depth bounds)."""
        lowest, worst = float("inf"), 0.0
        for t, read in self.reads[pool]:
            level = read - rate * t
            worst = max(worst, level - lowest)
            lowest = min(lowest, level)
        return worst

    def busy_rate(self, pool: str) -> float:
        """The bytes per second the device read from its first read to its last."""
        samples = self.reads[pool]
        moved = [i for i in range(1, len(samples)) if samples[i][1] != samples[i - 1][1]]
        if not moved:
            return 0.0
        first, last = samples[moved[0] - 1], samples[moved[-1]]
        return (last[1] - first[1]) / (last[0] - first[0])


# -- the fleet ------------------------------------------------------------------------------


@dataclass(frozen=True)
class VmDisks:
    name: str
    host: str
    disks: list[tuple[str, Path, str]]  # (disk, image, pool)


def _make_vms(pools: dict[str, PoolDevice]) -> list[VmDisks]:
    """60 VMs over three hosts: most with one disk, every fifth with two on one pool and
    every fifth with one disk on each; images of 1 to 3 MiB (60 % data, the rest holes)."""
    vms = []
    for i in range(VMS):
        pool, other = POOLS[i % 2], POOLS[(i + 1) % 2]
        layout = [("os", pool)]
        if i % 5 == 0:
            layout.append(("data", pool))
        elif i % 5 == 3:
            layout.append(("data", other))
        disks = []
        for n, (disk, on) in enumerate(layout):
            image = pools[on].mount / f"vm{i:02d}-{disk}.img"
            testdisk.create_disk(image, (1 + (i + n) % 3) * MiB, seed=100 * i + n, jobs=1)
            disks.append((disk, image, on))
        vms.append(VmDisks(f"vm{i:02d}", HOSTS[i % 3], disks))
    return vms


def _inventory(vms: list[VmDisks], slot: datetime) -> str:
    text = f"[limits]\nmax_vms = {MAX_VMS}\nmax_disks_per_pool = {MAX_DISKS_PER_POOL}\n\n"
    for name in POOLS:
        text += f"[pools.{name}]\negress_mb_per_s = {EGRESS_MB_PER_S}\n\n"
    text += f'[policies.nightly]\nschedule = {{ kind = "daily", time = "{slot:%H:%M}" }}\n\n'
    for vm in vms:
        text += vm_entry(vm.name, vm.host, vm.disks, 'policy = "nightly"\n') + "\n"
    return text


def _data_bytes(image: Path) -> int:
    """What a backup must read of an image: its allocated blocks."""
    return os.stat(image).st_blocks * 512


def _mid_backup(job: Job, size: int) -> bool:
    """Running, part way through its VM's ``size`` bytes of disks: some read, not all. (A
    job's progress is written at most twice a second, so a small disk's may show only when
    the disk is done.)"""
    done = sum(d.get("done", 0) for d in (job.progress or {}).values())
    return job.state == "running" and 0 < done < size


def _pid_of(worker: str) -> int:
    return int(worker.rsplit(":", 1)[1])  # "HOST/MACHINE:PID"


def test_a_fleet_of_three_hosts_keeps_its_limits_seen_from_outside_and_loses_nothing(
    tmp_path: Path, pools: dict[str, PoolDevice], pg_url: str, redis_url: str
) -> None:
    vms = _make_vms(pools)
    for pool in pools.values():
        pool.remount()
    images = {str(path): vm.name for vm in vms for _, path, _ in vm.disks}
    data = {name: 0 for name in POOLS}
    for vm in vms:
        for _, path, pool_name in vm.disks:
            data[pool_name] += _data_bytes(path)

    ctx = Context(str(tmp_path / "vault"), pg_url)
    # Blocks and packs of a MiB, scaled down with the disks: a job's progress moves block
    # by block, and a killed job leaves packs behind for the next attempt to adopt.
    init_vault(ctx, block_size=MiB, pack_target=MiB)
    vault_id = ctx.open_vault(load_index=False).config.vault_id

    # Yesterday's scheduled run of every VM, cancelled: so the scheduler's first look owes
    # each VM today's run (a minute ago), and all 60 come due at once; without a last run a
    # newly seen VM would wait for its next slot.
    slot = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=1)
    yesterday = slot - timedelta(days=1)
    history = JobQueue(ctx.catalog(), vault_id)  # no broker: nothing is sent
    for vm in vms:
        spec = {"scheduled": True, "due": yesterday.isoformat()}
        history.cancel(history.enqueue("backup", vm.name, spec, now=yesterday))
    seeded = {j.id for j in ctx.catalog().jobs(vault_id, limit=1000)}

    inventory = write_file(tmp_path / "inventory.toml", _inventory(vms, slot))
    logs = tmp_path / "logs"
    logs.mkdir()
    fleet = Fleet(ctx, redis_url, inventory, logs, FLEET_TIMINGS)
    view: OutsideView | None = None
    try:
        workers = [fleet.worker(host) for host in ("hv1", "hv1", "hv2", "hv3")]
        view = OutsideView(pools, images, [proc.pid for proc in workers])
        view.start()
        fleet.scheduler("--interval", "5", "--maintenance-at", "23:59")

        backups = _scheduled_backups(fleet, ctx, vault_id, slot)
        killed, doomed, lost = _kill_a_worker_mid_backup(
            fleet, ctx, vault_id, backups, vms, workers
        )
        jobs = _finished(fleet, ctx, vault_id, backups)
        view.stop()
        every = [j for j in ctx.catalog().jobs(vault_id, limit=1000) if j.id not in seeded]
        gate = RedisGate(redis.Redis.from_url(redis_url), vault_id, Limits, 5.0)
        held, admitted = gate.held(), gate.peaks()
    finally:
        if view is not None:
            view.stop()
        fleet.stop()
    log = fleet.log()
    gone = [path for path in images if not Path(path).is_file()]
    mounted = {name: os.path.ismount(pool.mount) for name, pool in pools.items()}
    assert not gone, (gone, mounted, log)  # the VMs' own disks are untouched

    # Every backup succeeded, once per VM; any other job the scheduler queued did too.
    assert sorted(str(j.vm) for j in jobs) == sorted(vm.name for vm in vms)
    failed = [(j.id, j.kind, j.state, j.error_message) for j in every if j.state != "succeeded"]
    assert not failed, (failed, log)

    # The killed worker's jobs (the one seen part way through, and any other it ran) were
    # delivered again and finished by hv1's other worker; no other job needed a second
    # attempt.
    again = [(j.id, j.attempts, j.error_code, j.worker) for j in jobs if j.id in lost]
    assert doomed in lost and all(
        (attempts, code) == (2, "worker_lost")
        and str(worker).startswith("hv1/")
        and worker != killed
        for _, attempts, code, worker in again
    ), (again, killed, log)
    retried = [(j.id, j.attempts) for j in jobs if j.id not in lost and j.attempts > 1]
    assert not retried, (retried, log)
    assert held == []  # the dead worker's leases expired, the others were released

    rate = EGRESS_MB_PER_S * 1e6
    print(  # the figures measured, shown with -s or a failure
        f"disks in flight {view.disks_peak}, VMs {view.vms_peak} "
        f"({view.trusted_sweeps}/{view.sweeps} sweeps); "
        + "; ".join(
            f"pool {p}: read {view.read_bytes(p) / 1e6:.1f} MB (data {data[p] / 1e6:.1f}), "
            f"{view.busy_rate(p) / 1e6:.2f} MB/s while busy, "
            f"excess {view.envelope_excess(p, rate) / 1e6:.2f} MB of {ALLOWANCE / 1e6:.2f}"
            for p in POOLS
        )
        + f"; lost {sorted(lost)}"
    )

    # Disks in flight per pool, from the workers' open files: the cap reached, never passed.
    assert view.trusted_sweeps > view.sweeps / 2, (view.trusted_sweeps, view.sweeps)
    assert view.disks_peak == dict.fromkeys(POOLS, MAX_DISKS_PER_POOL), view.disks_peak
    assert view.vms_peak <= MAX_VMS
    assert {admitted[f"pool:{p}"] for p in POOLS} == {MAX_DISKS_PER_POOL}  # vmvault's own count

    # Egress per pool, from the sectors its device read: every image's data was read from
    # the device (the view sees the reads), and never faster than the budget allows.
    for name in POOLS:
        assert view.read_bytes(name) >= data[name], (name, view.read_bytes(name), data[name])
        excess = view.envelope_excess(name, rate)
        assert excess <= ALLOWANCE, (name, excess, ALLOWANCE)
        # The limit was reached: the reads drew on the bucket's depth (they ran ahead of the
        # rate by a good part of it), so from there the rate held them back. Hardly a speed
        # asked of the machine: a pool idle for two seconds has its depth again, and the
        # next disks read it at once (3 to 5 MB here, busy or not).
        assert excess >= BURST / 4, (name, excess, BURST)

    # The vault: clean with every pack's data read (the CLI, as an operator would ask);
    # the killed job's point, a VM of two disks on one pool and one of a disk on each
    # restore byte for byte.
    env = {"VMVAULT_VAULT": ctx.vault_path, "VMVAULT_CATALOG": pg_url}
    check = run_cli("check", "--read-data", "--json", env=env)
    assert check.returncode == 0, check.stdout + check.stderr
    # The only thing the killed worker may leave is the temporary files of the packs it was
    # writing (never renamed into place, so no object is torn): a warning, nothing else.
    problems = json.loads(check.stdout)["problems"]
    assert all(p["kind"] == "leftover_temp" for p in problems), check.stdout
    by_name = {vm.name: vm for vm in vms}
    restored = {next(j.vm for j in jobs if j.id == doomed), "vm05", "vm08"}
    for job in (j for j in jobs if j.vm in restored):
        for disk, image, _ in by_name[str(job.vm)].disks:
            target = tmp_path / f"restored-{job.vm}-{disk}.img"
            run_restore(ctx, str(job.point_id), str(target), disk=disk)
            assert same_content(target, image), (job.vm, disk)


def _scheduled_backups(fleet: Fleet, ctx: Context, vault_id: str, slot: datetime) -> set[int]:
    """The ids of today's 60 backups, once the scheduler has queued them all."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        due = {
            j.id
            for j in ctx.catalog().jobs(vault_id, limit=1000)
            if j.kind == "backup" and (j.spec or {}).get("due") == slot.isoformat()
        }
        if len(due) == VMS:
            return due
        time.sleep(0.2)
    raise AssertionError(f"the scheduler queued {len(due)} of {VMS} backups\n{fleet.log()}")


def _finished(fleet: Fleet, ctx: Context, vault_id: str, backups: set[int]) -> list[Job]:
    """The backups, once all have ended (one query a look: the workers share the machine)."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        jobs = [j for j in ctx.catalog().jobs(vault_id, limit=1000) if j.id in backups]
        if all(j.state in FINAL_STATES for j in jobs):
            return jobs
        time.sleep(0.5)
    states = Counter(j.state for j in jobs)
    raise AssertionError(f"backups not done in time: {states}\n{fleet.log()}")


def _kill_a_worker_mid_backup(
    fleet: Fleet,
    ctx: Context,
    vault_id: str,
    backups: set[int],
    vms: list[VmDisks],
    workers: list[subprocess.Popen[bytes]],
) -> tuple[str, int, set[int]]:
    """SIGKILL the hv1 worker of the first hv1 backup seen part way through; returns the
    worker's name, that backup and every job the worker was running."""
    sizes = {vm.name: sum(path.stat().st_size for _, path, _ in vm.disks) for vm in vms}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        running = [
            j
            for j in ctx.catalog().jobs(vault_id, limit=1000)
            if j.id in backups
            and str(j.worker).startswith("hv1/")
            and _mid_backup(j, sizes[str(j.vm)])
        ]
        if running:
            name = str(running[0].worker)
            [doomed] = [proc for proc in workers if proc.pid == _pid_of(name)]
            doomed.kill()
            doomed.wait(timeout=10)
            lost = {
                j.id
                for j in ctx.catalog().jobs(vault_id, limit=1000)
                if j.state == "running" and j.worker == name
            }
            return name, running[0].id, lost
        assert all(proc.poll() is None for proc in workers), fleet.log()
        time.sleep(0.1)
    raise AssertionError(f"no hv1 backup was seen part way through\n{fleet.log()}")
