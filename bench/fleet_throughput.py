#!/usr/bin/env python3
"""Throughput of a fleet on one machine: backups by one `vmvault worker` and by several.

    .venv/bin/python bench/fleet_throughput.py [--vms 12] [--size 256M] [--workers 1,3]
        [--percent 1] [--catalog auto] [--workdir DIR] [--out DIR] [--keep]

A fleet as README.md's "Scale out: a fleet" sets one up, all on this machine: a
redis-server of the bench's own (loopback, a free port, no persistence), ``vmvault worker
--broker URL --host hvK`` processes, a local directory vault made by ``vmvault init`` and a
catalog: PostgreSQL (a cluster of the bench's own) when its server is installed, else
SQLite (``--catalog`` chooses; the report names the one used).

``--vms`` images come from vmvault.testdisk (the benchmarks' mix of holes, zeros, text,
random data and copies; one seed per VM) and are kept pristine. For each worker count W in
``--workers``: a fresh vault and catalog and a fresh copy of the images; an inventory with
the VMs spread round-robin over hosts hv1..hvW, and limits that never hold a job back
(``max_vms`` = the VM count, a per-disk cap no disk reaches, no pools), so only the machine
bounds the run. Then two rounds, each with W freshly started workers (default
concurrency), one job per VM sent to its host's queue:

- full: the first backup of every VM;
- incremental: after ``testdisk.mutate_disk`` changed ``--percent`` % of each image.

A round's wall time runs from the first job sent to the end of the last one (its
``finished_at`` in the catalog); its CPU is the workers' user + system time over the round
(/proc/PID/stat before and after, so start-up is not counted) and its memory each
worker's peak RSS (VmHWM in /proc/PID/status, read before the worker is stopped). The
images are in the page cache at the start of each round: a figure of CPU and software, not
of disks. Every job must succeed, on a worker of its VM's host; otherwise the bench stops,
non-zero, with the job's error. Writes fleet_throughput.json and fleet_throughput.md under
``--out``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import bench_proc
import bench_report
import redis
import sqlalchemy as sa
from bench_tools import PASSPHRASE, clean_env, vmvault_command

from vmvault import testdisk
from vmvault.catalog.models import Job
from vmvault.catalog.store import Catalog
from vmvault.cluster.broker import fleet_queue
from vmvault.cluster.settings import FleetSettings
from vmvault.inventory import InventoryFile
from vmvault.jobs.queue import JobQueue
from vmvault.model.jobs import FINAL_STATES

HERE = Path(__file__).resolve().parent
START_TIMEOUT = 60.0  # seconds for a server or a worker to come up
STOP_TIMEOUT = 30.0  # seconds for a worker's warm shutdown before it is killed
POLL_SECONDS = 0.5  # between looks at the jobs: often enough, without loading the catalog
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# The per-disk cap (disk_mb_per_s) cannot be switched off; a rate no disk here reaches
# leaves it out of the figure.
UNCAPPED_MB_PER_S = 1_000_000
MUTATION_SEED = 2


class BenchFailed(Exception):
    """A job, a worker or a server went wrong: the message says which and why."""


# -- servers of the bench's own -----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def redis_server() -> Iterator[str]:
    """A redis-server on loopback and a free port, in a temporary directory, saving
    nothing to disk; stopped (and its directory removed) on the way out, whatever happens."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise BenchFailed("no redis-server: install it (`make sysdeps`, Debian redis-server)")
    base = Path(tempfile.mkdtemp(prefix="vmvault-bench-redis-"))
    port = free_port()
    log = base / "redis.log"
    argv = [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(base)]
    argv += ["--save", "", "--appendonly", "no", "--protected-mode", "yes"]
    proc = subprocess.Popen(
        [*argv, "--logfile", str(log)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers_ping(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                text = log.read_text()[-2000:] if log.exists() else ""
                raise BenchFailed(f"redis-server did not start: {text}")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop_process(proc, 10)
        shutil.rmtree(base, ignore_errors=True)


def postgres_binary(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else None


def postgres_available() -> str | None:
    """None if a PostgreSQL cluster can be started here, else why not."""
    if postgres_binary("initdb") is None or postgres_binary("pg_ctl") is None:
        return "no PostgreSQL server binaries (/usr/lib/postgresql/*/bin)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")  # the server refuses to run as root
        except KeyError:
            return "running as root and there is no postgres user to run the server"
    return None


@contextmanager
def postgres_server() -> Iterator[str]:
    """A fresh PostgreSQL cluster in a temporary directory, on loopback and a free port;
    yields the SQLAlchemy URL of its ``postgres`` database. Stopped and removed after."""
    initdb, pg_ctl = postgres_binary("initdb"), postgres_binary("pg_ctl")
    assert initdb and pg_ctl
    base = tempfile.mkdtemp(prefix="vmvault-bench-pg-")
    as_user: list[str] = []
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(base, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = os.path.join(base, "data"), free_port()

    def run(*argv: str) -> None:
        done = subprocess.run([*as_user, *argv], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise BenchFailed(f"{Path(argv[0]).name} failed: {done.stderr[-2000:]}")

    try:
        run(initdb, "-D", data, "-A", "trust", "-U", "vmvault", "--no-sync")
        # -F: no fsync, like the tests' cluster; the vault, not the catalog, is what is timed
        options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -F"
        run(pg_ctl, "-D", data, "-o", options, "-l", f"{base}/log", "-w", "start")
        try:
            yield f"postgresql+psycopg://vmvault@127.0.0.1:{port}/postgres"
        finally:
            run(pg_ctl, "-D", data, "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def fresh_postgres_database(server_url: str, name: str) -> str:
    """An empty database ``name`` on the bench's cluster (each worker count gets its own)."""
    engine = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    return server_url.rsplit("/", 1)[0] + f"/{name}"


def _wait_or_kill(proc: subprocess.Popen[bytes], timeout: float) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def _stop_process(proc: subprocess.Popen[bytes], timeout: float) -> int:
    if proc.poll() is None:
        proc.terminate()
    return _wait_or_kill(proc, timeout)


def machine_cpu_seconds() -> float:
    """CPU time the whole machine has spent busy (every core, every process) since boot."""
    # /proc/stat's "cpu" line: user nice system idle iowait irq softirq steal ... (proc(5))
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / CLOCK_TICKS


# -- the fleet's workers ------------------------------------------------------------------


@dataclass
class Worker:
    """One ``vmvault worker --host`` process and where its output goes."""

    host: str
    proc: subprocess.Popen[bytes]
    log: Path

    def cpu_seconds(self) -> float:
        """User + system time of the process (all its threads) and of children it reaped."""
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        # Fields after the command's closing parenthesis start at field 3 (state); utime,
        # stime, cutime and cstime are fields 14-17 (proc(5)).
        fields = stat.rpartition(")")[2].split()
        return sum(int(fields[i]) for i in range(11, 15)) / CLOCK_TICKS

    def peak_rss(self) -> int:
        """VmHWM: the most resident memory the process has had, in bytes."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise BenchFailed(f"no VmHWM for worker {self.host} (pid {self.proc.pid})")

    def ready(self) -> bool:
        # Celery's own line once the worker consumes its queues: "<hostname> ready."
        name = f"vmvault-{self.host}-"
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return any(name in line and line.endswith(" ready.") for line in text.splitlines())

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


@dataclass
class Fleet:
    """W workers of one round, started together and stopped together."""

    workers: list[Worker]

    @classmethod
    def start(cls, hosts: list[str], env: dict[str, str], logs: Path) -> Fleet:
        logs.mkdir(parents=True, exist_ok=True)
        fleet = cls([])
        try:
            for host in hosts:
                log = logs / f"worker-{host}.log"
                # Each worker stands for a hypervisor of its own: its own host cache (the
                # chunk index), as on separate machines.
                own = env | {"VMVAULT_CACHE_DIR": str(logs.parent / "cache" / host)}
                with open(log, "wb") as out:
                    proc = subprocess.Popen(
                        [*vmvault_command(), "worker", "--host", host],
                        env=own,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                fleet.workers.append(Worker(host, proc, log))
            fleet.wait_ready()
        except BaseException:
            fleet.stop()
            raise
        return fleet

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not all(w.ready() for w in self.workers):
            self.check_alive()
            if time.monotonic() > deadline:
                late = [w.host for w in self.workers if not w.ready()]
                raise BenchFailed(
                    f"workers {late} not ready in {START_TIMEOUT:.0f} s\n{self.log()}"
                )
            time.sleep(0.1)

    def check_alive(self) -> None:
        for w in self.workers:
            if w.proc.poll() is not None:
                raise BenchFailed(f"worker {w.host} exited ({w.proc.returncode}):\n{w.tail()}")

    def cpu_seconds(self) -> list[float]:
        return [w.cpu_seconds() for w in self.workers]

    def peak_rss(self) -> list[int]:
        return [w.peak_rss() for w in self.workers]

    def log(self) -> str:
        return "\n".join(f"--- {w.host}\n{w.tail()}" for w in self.workers)

    def stop(self) -> list[int]:
        """SIGTERM (a warm shutdown: running jobs hand themselves back), then a kill."""
        for w in self.workers:
            if w.proc.poll() is None:
                w.proc.send_signal(signal.SIGTERM)
        return [_wait_or_kill(w.proc, STOP_TIMEOUT) for w in self.workers]


# -- one worker count ----------------------------------------------------------------------


def host_of(index: int, workers: int) -> str:
    """Round-robin: VM i on hv((i mod W) + 1)."""
    return f"hv{index % workers + 1}"


def write_inventory(path: Path, images: list[Path], workers: int) -> None:
    vms = len(images)
    text = (
        "[limits]\n"
        f"max_vms = {vms}\n"
        f"max_disks_per_pool = {vms}\n"
        f"disk_mb_per_s = {UNCAPPED_MB_PER_S}\n\n"
    )
    for i, image in enumerate(images):
        text += (
            f'[[vms]]\nname = "{image.stem}"\nhost = "{host_of(i, workers)}"\n'
            f'  [[vms.disks]]\n  name = "os"\n  path = "{image}"\n  role = "os"\n\n'
        )
    path.write_text(text)


def make_images(folder: Path, vms: int, size: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for i in range(vms):
        image = folder / f"vm{i + 1:02d}.img"
        testdisk.create_disk(image, size, seed=i + 1)
        images.append(image)
    return images


def vmvault_init(env: dict[str, str], logs: Path) -> str:
    done = subprocess.run(
        [*vmvault_command(), "init", "--json"], env=env, capture_output=True, text=True
    )
    (logs / "init.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise BenchFailed(f"vmvault init failed: {done.stderr[-2000:]}")
    return str(json.loads(done.stdout)["vault_id"])


def wait_for_jobs(queue: JobQueue, job_ids: list[int], fleet: Fleet, timeout: float) -> list[Job]:
    """The jobs' rows once all have ended; a worker that dies or a timeout stops the bench."""
    final = {str(s) for s in FINAL_STATES}
    deadline = time.monotonic() + timeout
    while True:
        with queue.catalog.session() as s:
            jobs = list(s.scalars(sa.select(Job).where(Job.id.in_(job_ids)).order_by(Job.id)))
        if all(j.state in final for j in jobs):
            return jobs
        fleet.check_alive()
        if time.monotonic() > deadline:
            states = {j.vm: j.state for j in jobs}
            raise BenchFailed(f"jobs not done in {timeout:.0f} s: {states}\n{fleet.log()}")
        time.sleep(POLL_SECONDS)


def run_round(
    name: str,
    images: list[Path],
    hosts: list[str],
    env: dict[str, str],
    queue: JobQueue,
    run_dir: Path,
    timeout: float,
) -> dict[str, Any]:
    """W workers started, one backup per VM sent and waited for, the workers stopped."""
    os.sync()  # the previous round's (or the mutation's) writes are not this round's work
    for image in images:
        bench_proc.warm_cache(image)
    logical = sum(i.stat().st_size for i in images)
    allocated = sum(bench_proc.allocated(i) for i in images)
    load_start = os.getloadavg()
    booting = time.monotonic()
    fleet = Fleet.start(hosts, env, run_dir / f"logs-{name}")
    start_s = time.monotonic() - booting
    try:
        cpu_before, machine_before = fleet.cpu_seconds(), machine_cpu_seconds()
        sent_at = datetime.now(UTC)
        started = time.monotonic()
        job_ids = [queue.enqueue("backup", image.stem) for image in images]
        jobs = wait_for_jobs(queue, job_ids, fleet, timeout)
        observed = time.monotonic() - started
        cpu_after, machine_after = fleet.cpu_seconds(), machine_cpu_seconds()
        peaks = fleet.peak_rss()
    finally:
        stopping = time.monotonic()
        exits = fleet.stop()
        stop_s = time.monotonic() - stopping
    failed = [j for j in jobs if j.state != "succeeded"]
    if failed:
        j = failed[0]
        raise BenchFailed(
            f"{name}: {len(failed)} of {len(jobs)} jobs did not succeed; {j.vm} {j.state}: "
            f"{j.error_code}: {j.error_message} (--keep keeps the workers' logs)"
        )
    host_by_vm = {image.stem: host_of(i, len(hosts)) for i, image in enumerate(images)}
    astray = [j.vm for j in jobs if not str(j.worker).startswith(f"{host_by_vm[str(j.vm)]}/")]
    if astray:
        raise BenchFailed(f"{name}: jobs of {astray} ran on another host's worker")
    ended = max(j.finished_at for j in jobs if j.finished_at is not None)
    wall = (ended - sent_at).total_seconds()
    cpu = [after - before for before, after in zip(cpu_before, cpu_after, strict=True)]
    return {
        "wall_s": round(wall, 3),
        "wall_observed_s": round(observed, 3),  # to the poll that saw the last job end
        "logical_bytes": logical,
        "allocated_bytes": allocated,
        "logical_mb_s": round(logical / 1e6 / wall, 2),
        "allocated_mb_s": round(allocated / 1e6 / wall, 2),
        "cpu_s": round(sum(cpu), 2),
        "cpu_s_per_worker": [round(c, 2) for c in cpu],
        "cores_busy": round(sum(cpu) / wall, 2),
        # The whole machine over the same time: the workers, Redis, the catalog's server,
        # this script, and whatever else runs here (a shared machine's other work).
        "machine_cores_busy": round((machine_after - machine_before) / observed, 2),
        "peak_rss_per_worker": peaks,
        "worker_exit_codes": exits,
        "workers_start_s": round(start_s, 2),  # outside the wall time: up to "ready."
        "workers_stop_s": round(stop_s, 2),
        "loadavg_start": [round(x, 2) for x in load_start],
        "jobs": [_job_row(j, sent_at) for j in jobs],
        "attempts_over_1": sum(1 for j in jobs if (j.attempts or 0) > 1),
        "succeeded": True,
    }


def _job_row(job: Job, sent_at: datetime) -> dict[str, Any]:
    def since(at: datetime | None) -> float | None:
        return round((at - sent_at).total_seconds(), 3) if at is not None else None

    return {
        "id": job.id,
        "vm": job.vm,
        "state": job.state,
        "worker": job.worker,
        "attempts": job.attempts,
        "started_s": since(job.started_at),
        "finished_s": since(job.finished_at),
        "bytes_read": job.bytes_read,
        "bytes_changed": job.bytes_changed,
        "bytes_written": job.bytes_written,
    }


def run_worker_count(
    workers: int,
    pristine: list[Path],
    args: argparse.Namespace,
    broker: str,
    catalog_server: str | None,
) -> dict[str, Any]:
    """A fresh vault, catalog and copy of the images; the full round, the mutation, the
    incremental round."""
    run_dir = args.workdir / f"workers-{workers}"
    shutil.rmtree(run_dir, ignore_errors=True)
    (run_dir / "images").mkdir(parents=True)
    images = [run_dir / "images" / p.name for p in pristine]
    for src, dst in zip(pristine, images, strict=True):
        bench_proc.copy_image(src, dst)
    inventory = run_dir / "inventory.toml"
    write_inventory(inventory, images, workers)
    if catalog_server is None:
        catalog_url = f"sqlite:///{run_dir / 'catalog.db'}"
    else:
        catalog_url = fresh_postgres_database(catalog_server, f"fleet_bench_{workers}")
    env = clean_env() | {
        "VMVAULT_PASSPHRASE": PASSPHRASE,
        "VMVAULT_VAULT": str(run_dir / "vault"),
        "VMVAULT_CATALOG": catalog_url,
        "VMVAULT_INVENTORY": str(inventory),
        "VMVAULT_BROKER": broker,
    }
    vault_id = vmvault_init(env, run_dir)
    client = redis.Redis.from_url(broker)
    client.flushall()  # nothing left from the previous worker count
    client.close()
    catalog = Catalog(catalog_url)  # its tables exist before the workers start
    queue = fleet_queue(catalog, vault_id, FleetSettings(broker), InventoryFile(str(inventory)))
    hosts = [f"hv{k + 1}" for k in range(workers)]
    label = f"{workers} worker{'s' if workers > 1 else ''}"
    try:
        full = run_round("full", images, hosts, env, queue, run_dir, args.timeout)
        bench_proc.progress(label, f"full {full['wall_s']:.1f} s, CPU {full['cpu_s']:.1f} s")
        changed = sum(
            testdisk.mutate_disk(image, args.percent, seed=MUTATION_SEED).bytes_written
            for image in images
        )
        incremental = run_round("incremental", images, hosts, env, queue, run_dir, args.timeout)
        incremental["changed_bytes"] = changed
        bench_proc.progress(
            label, f"incremental {incremental['wall_s']:.1f} s, CPU {incremental['cpu_s']:.1f} s"
        )
    finally:
        catalog.engine.dispose()
    vault_bytes = bench_proc.tree_size(run_dir / "vault")
    if not args.keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    return {
        "workers": workers,
        "full": full,
        "incremental": incremental,
        "vault_bytes": vault_bytes,
    }


# -- the report ----------------------------------------------------------------------------


ROUNDS = ("full", "incremental")


def ratios(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The most workers against the fewest: throughput (= wall time) and CPU ratios."""
    low, high = runs[0], runs[-1]
    out: dict[str, Any] = {"compared": f"{high['workers']} vs {low['workers']}"}
    for name in ROUNDS:
        a, b = low[name], high[name]
        out[name] = {
            "throughput": round(a["wall_s"] / b["wall_s"], 2),
            "cpu": round(b["cpu_s"] / a["cpu_s"], 2),
            "peak_rss_sum": round(sum(b["peak_rss_per_worker"]) / sum(a["peak_rss_per_worker"]), 2),
        }
    return out


def mib(n: float) -> str:
    return f"{n / 2**20:.0f}"


def markdown(report: dict[str, Any]) -> str:
    p, m = report["parameters"], report["machine"]
    runs = report["runs"]
    first = runs[0]["full"]
    load, load_end = (", ".join(f"{x:.2f}" for x in m[k]) for k in ("loadavg_start", "loadavg_end"))
    lines = [
        f"## Fleet throughput: {', '.join(str(r['workers']) for r in runs)} workers on one "
        f"machine ({report['date']})",
        "",
        f"{p['vms']} VMs of {p['size'] / 2**20:g} MiB ({first['logical_bytes'] / 1e9:.2f} GB "
        f"logical, {first['allocated_bytes'] / 1e9:.2f} GB allocated), {p['percent']:g} % of "
        f"each changed before the incremental; vault: a local directory; catalog: "
        f"{report['catalog']}; broker: redis-server on loopback. Machine: {m.get('nproc')} "
        f"cores ({m.get('cpu', '?')}), {m.get('ram_bytes', 0) / 2**30:.0f} GiB RAM; load "
        f"average at start {load}, at the end {load_end}.",
        "",
        "| workers | round | wall s | MB/s logical | MB/s allocated | CPU s | cores busy "
        "| machine cores busy | peak RSS MiB per worker | load at start |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        for name in ROUNDS:
            r = run[name]
            lines.append(
                f"| {run['workers']} | {name} | {r['wall_s']:.1f} | {r['logical_mb_s']:.0f} "
                f"| {r['allocated_mb_s']:.0f} | {r['cpu_s']:.1f} | {r['cores_busy']:.2f} "
                f"| {r['machine_cores_busy']:.2f} "
                f"| {' / '.join(mib(x) for x in r['peak_rss_per_worker'])} "
                f"| {r['loadavg_start'][0]:.2f} |"
            )
    lines.append("")
    ratio = report["ratios"]
    if ratio:
        for name in ROUNDS:
            q = ratio[name]
            lines.append(
                f"- {ratio['compared']} workers, {name}: throughput x{q['throughput']:.2f}, "
                f"CPU x{q['cpu']:.2f}, sum of peak RSS x{q['peak_rss_sum']:.2f}"
            )
    retried = sum(run[n]["attempts_over_1"] for run in runs for n in ROUNDS)
    lines += [
        "- every job succeeded on a worker of its VM's host"
        + (f" ({retried} after a retry)" if retried else ", each at its first attempt"),
        "",
        "Cores busy: the workers' CPU seconds over the wall time; machine: every process's "
        "(the workers, Redis, the catalog, this script and any other work), so the "
        "difference is what the rest of the machine took. The load average at a round's "
        "start counts the previous round's own threads too.",
    ]
    return "\n".join(lines) + "\n"


# -- main ----------------------------------------------------------------------------------


MAIN_PID = os.getpid()


def _interrupted(signum: int, _frame: FrameType | None) -> None:
    if os.getpid() != MAIN_PID:  # a forked image writer of testdisk's: end as by default
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    raise KeyboardInterrupt(f"signal {signum}")  # so the finally blocks stop what was started


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vms", type=int, default=12)
    ap.add_argument("--size", default="256M", help="each VM's disk image (K/M/G)")
    ap.add_argument("--workers", default="1,3", help="worker counts to compare, fewest first")
    ap.add_argument("--percent", type=float, default=1.0, help="of each image changed")
    ap.add_argument("--catalog", choices=("auto", "sqlite", "postgres"), default="auto")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per round at most")
    ap.add_argument("--workdir", type=Path, default=HERE / "work" / "fleet-throughput")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--keep", action="store_true", help="keep the workdir afterwards")
    args = ap.parse_args(argv)
    counts = sorted({int(w) for w in args.workers.split(",") if w.strip()})
    if not counts or counts[0] < 1 or args.vms < 1:
        ap.error("--workers needs counts of at least 1, --vms at least 1")
    size = testdisk.parse_size(args.size)
    use_postgres = args.catalog == "postgres"
    if args.catalog != "sqlite":
        why_not = postgres_available()
        if why_not and use_postgres:
            ap.error(f"--catalog postgres: {why_not}")
        use_postgres = why_not is None
    for sig in (signal.SIGINT, signal.SIGTERM):  # SIGINT too: a background job ignores it
        signal.signal(sig, _interrupted)
    machine = bench_report.machine_info() | {"loadavg_start": list(os.getloadavg())}
    date = bench_report.utc_now().isoformat(timespec="seconds")
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    runs = []
    try:
        with ExitStack() as stack:
            broker = stack.enter_context(redis_server())
            catalog_server = stack.enter_context(postgres_server()) if use_postgres else None
            bench_proc.progress("fleet", f"{args.vms} images of {args.size} in {args.workdir}")
            pristine = make_images(args.workdir / "pristine", args.vms, size)
            for workers in counts:
                runs.append(run_worker_count(workers, pristine, args, broker, catalog_server))
    except BenchFailed as exc:
        print(f"fleet_throughput: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fleet_throughput: interrupted; its workers and servers are stopped", file=sys.stderr)
        return 130
    finally:
        if not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)
    machine["loadavg_end"] = list(os.getloadavg())
    report = {
        "date": date,
        "machine": machine,
        "parameters": {
            "vms": args.vms,
            "size": size,
            "workers": counts,
            "percent": args.percent,
        },
        "catalog": _catalog_name() if use_postgres else "SQLite",
        "runs": runs,
        "ratios": ratios(runs) if len(runs) > 1 else {},
    }
    text = markdown(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fleet_throughput.json").write_text(json.dumps(report, indent=2, default=str))
    (args.out / "fleet_throughput.md").write_text(text)
    print(text)
    return 0


def _catalog_name() -> str:
    postgres = postgres_binary("postgres")
    if postgres is None:
        return "PostgreSQL"
    version = subprocess.run([postgres, "--version"], capture_output=True, text=True).stdout
    found = re.search(r"\d+(\.\d+)+", version)  # "postgres (PostgreSQL) 15.18 (Debian ...)"
    return f"PostgreSQL {found[0]}" if found else "PostgreSQL"


if __name__ == "__main__":
    sys.exit(main())
