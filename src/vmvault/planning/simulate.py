"""Simulate a day of backups with the scheduler's own admission rules.

Pure: jobs in, timings and per-pool load out. Time advances in fixed steps (60 s by
default). At each step queued jobs that are due start if `jobs.admission.admit` lets them
(the same function the worker uses: 40 VMs, 20 disks per pool); every running disk moves
up to its own rate, and a pool's disks together never exceed the pool's egress (shared
pro rata). A job ends when all its disks are done. Each pool's load (what it carries) and
demand (what its running disks would move unthrottled) are recorded at every step: demand
above the egress budget means the pool is over-subscribed and the jobs on it run slower.
Admission is asked again only when something changed (a job ended or became due): with the
same jobs running its answer cannot change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from vmvault.jobs.admission import JobLoad, Limits, admit

NO_POOL = "(none)"  # the pool name the planner gives disks the inventory puts on no pool


@dataclass(frozen=True)
class PlannedDisk:
    pool: str
    transfer_bytes: int
    rate: float  # bytes/s this disk can move on its own (table or measured, capped)


@dataclass(frozen=True)
class PlannedJob:
    vm: str
    due: float  # seconds from the start of the simulated day
    disks: Sequence[PlannedDisk]
    deadline: float | None = None  # the end of its window, or due + 24 h for daily policies
    latest_start: float | None = None  # how late it may be moved (exclusive): its window
    setup: float = 0.0  # seconds before its disks transfer (snapshot): admitted, reading none


@dataclass
class JobTiming:
    vm: str
    due: float
    start: float | None = None
    end: float | None = None
    deadline: float | None = None

    @property
    def wait(self) -> float:
        return (self.start - self.due) if self.start is not None else 0.0

    @property
    def late(self) -> bool:
        if self.end is None:
            return True
        return self.deadline is not None and self.end > self.deadline


@dataclass
class Simulation:
    step: float
    timings: list[JobTiming] = field(default_factory=list)
    pool_load: dict[str, list[float]] = field(default_factory=dict)  # bytes/s at each step
    pool_demand: dict[str, list[float]] = field(default_factory=dict)  # bytes/s wanted

    @property
    def late(self) -> list[JobTiming]:
        return [t for t in self.timings if t.late]

    @property
    def waited(self) -> list[JobTiming]:
        """Jobs that had to wait for admission (the fleet's or a pool's limits)."""
        return [t for t in self.timings if t.wait > 0]

    def peak(self, pool: str) -> float:
        return max(self.pool_load.get(pool, [0.0]), default=0.0)

    def demand_peak(self, pool: str) -> float:
        return max(self.pool_demand.get(pool, [0.0]), default=0.0)


def simulate(
    jobs: Sequence[PlannedJob],
    limits: Limits,
    pool_egress: dict[str, float],  # bytes/s per pool
    *,
    step: float = 60.0,
    horizon: float = 2 * 86400.0,
) -> Simulation:
    sim = Simulation(step)
    order = sorted(range(len(jobs)), key=lambda i: (jobs[i].due, jobs[i].vm))
    timings = {i: JobTiming(jobs[i].vm, jobs[i].due, deadline=jobs[i].deadline) for i in order}
    remaining = {i: [float(d.transfer_bytes) for d in jobs[i].disks] for i in order}
    loads = {i: _load(jobs[i]) for i in order}
    queued = list(order)
    running: list[int] = []
    pools = sorted({d.pool for j in jobs for d in j.disks} | set(pool_egress))
    sim.pool_load = {p: [] for p in pools}
    sim.pool_demand = {p: [] for p in pools}
    t = 0.0
    changed = True
    while (queued or running) and t < horizon:
        if not changed:
            changed = any(t - step < jobs[i].due <= t for i in queued)
        for i in list(queued) if changed else ():  # admission, in due order, as workers claim
            if jobs[i].due > t:
                continue
            if admit([loads[r] for r in running], loads[i], limits) is None:
                queued.remove(i)
                running.append(i)
                timings[i].start = t
        changed = False
        # each disk's wish, then each pool's share of its egress
        wish: dict[str, float] = {p: 0.0 for p in pools}
        transferring = [i for i in running if t >= (timings[i].start or 0.0) + jobs[i].setup]
        for i in transferring:
            for d, left in zip(jobs[i].disks, remaining[i], strict=True):
                if left > 0:
                    wish[d.pool] += d.rate
        factor = {
            p: min(1.0, pool_egress.get(p, float("inf")) / w) if w else 1.0 for p, w in wish.items()
        }
        for p in pools:
            sim.pool_load[p].append(wish[p] * factor[p])
            sim.pool_demand[p].append(wish[p])
        for i in transferring:
            for k, d in enumerate(jobs[i].disks):
                remaining[i][k] = max(0.0, remaining[i][k] - d.rate * factor[d.pool] * step)
            if all(left <= 0 for left in remaining[i]):
                running.remove(i)
                timings[i].end = t + step
                changed = True
        t += step
    sim.timings = [timings[i] for i in order]
    return sim


def _load(job: PlannedJob) -> JobLoad:
    """What admission counts, as the worker's ``job_load`` does: disks on a declared pool
    (a disk on no pool shares no pool's disk cap)."""
    counts: dict[str, int] = {}
    for d in job.disks:
        if d.pool != NO_POOL:
            counts[d.pool] = counts.get(d.pool, 0) + 1
    return JobLoad(job.vm, counts)
