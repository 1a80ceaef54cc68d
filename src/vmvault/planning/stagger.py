"""Propose staggered start times that lower each pool's peak load.

Greedy, and explained in one paragraph: take the VMs from the largest backup to the
smallest; give each, in turn, the delay (none, or a multiple of ``step_minutes`` up to
``spread_hours``, and never past the end of its window) that fits the admission limits best
(40 VMs, 20 disks of a pool in flight) and then gives the lowest peak demand, relative to its
egress budget, on the pools its disks read from; the earliest delay among equals. All runs of
a VM move together (an hourly policy's every run), so the proposal is one ``start`` per VM.

Candidates are scored on a load profile of the VMs placed so far, each disk reading at its
own rate from its start for as long as its data takes, in one-minute bins: cheap enough for
hundreds of VMs with a dozen candidates each (a whole simulated day per candidate is not).
The profile ignores throttling, which is what the delays avoid; the days before and after are
then simulated with the scheduler's own admission rules (`simulate`), and those are the
figures shown. An ILP would find the optimum; the greedy stays fast and explainable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from vmvault.jobs.admission import Limits
from vmvault.planning.simulate import PlannedJob, Simulation, simulate


@dataclass(frozen=True)
class Proposal:
    starts: dict[str, float]  # VM -> proposed first start (seconds from the day's start)
    delays: dict[str, float]  # VM -> seconds later than now
    before: Simulation
    after: Simulation

    @property
    def peak_before(self) -> dict[str, float]:  # pool -> peak bytes/s carried
        return {p: self.before.peak(p) for p in self.before.pool_load}

    @property
    def peak_after(self) -> dict[str, float]:
        return {p: self.after.peak(p) for p in self.after.pool_load}


class _Profile:
    """What the VMs placed so far ask of the fleet and the pools, per bin of time."""

    def __init__(self, limits: Limits, egress: dict[str, float], resolution: float) -> None:
        self.limits = limits
        self.egress = egress
        self.resolution = resolution
        self.vms: dict[int, int] = {}
        self.disks: dict[tuple[str, int], int] = {}
        self.demand: dict[tuple[str, int], float] = {}

    def _bins(self, start: float, seconds: float) -> range:
        first = math.floor(start / self.resolution)
        return range(first, first + max(1, math.ceil(seconds / self.resolution)))

    def _own(
        self, jobs: Sequence[PlannedJob]
    ) -> tuple[dict[int, int], dict[tuple[str, int], int], dict[tuple[str, int], float]]:
        vms: dict[int, int] = {}
        disks: dict[tuple[str, int], int] = {}
        demand: dict[tuple[str, int], float] = {}
        for job in jobs:
            longest = max((d.transfer_bytes / d.rate for d in job.disks if d.rate), default=0.0)
            for b in self._bins(job.due, longest):
                vms[b] = vms.get(b, 0) + 1
            for d in job.disks:
                for b in self._bins(job.due, d.transfer_bytes / d.rate if d.rate else 0.0):
                    disks[(d.pool, b)] = disks.get((d.pool, b), 0) + 1
                    demand[(d.pool, b)] = demand.get((d.pool, b), 0.0) + d.rate
        return vms, disks, demand

    def score(self, jobs: Sequence[PlannedJob]) -> tuple[int, float]:
        """(how far an admission limit is exceeded, the highest demand over budget)."""
        vms, disks, demand = self._own(jobs)
        excess = 0
        for b, n in vms.items():
            excess = max(excess, self.vms.get(b, 0) + n - self.limits.max_vms)
        for (pool, b), n in disks.items():
            excess = max(excess, self.disks.get((pool, b), 0) + n - self.limits.disk_cap(pool))
        peak = 0.0
        for (pool, b), rate in demand.items():
            budget = self.egress.get(pool)
            if budget:
                peak = max(peak, (self.demand.get((pool, b), 0.0) + rate) / budget)
        return excess, peak

    def add(self, jobs: Sequence[PlannedJob]) -> None:
        vms, disks, demand = self._own(jobs)
        for b, n in vms.items():
            self.vms[b] = self.vms.get(b, 0) + n
        for key, n in disks.items():
            self.disks[key] = self.disks.get(key, 0) + n
        for key, rate in demand.items():
            self.demand[key] = self.demand.get(key, 0.0) + rate


def stagger(
    jobs: Sequence[PlannedJob],
    limits: Limits,
    pool_egress: dict[str, float],
    *,
    step_minutes: int = 30,
    spread_hours: float = 6.0,
    resolution: float = 60.0,
) -> Proposal:
    before = simulate(jobs, limits, pool_egress)
    by_vm: dict[str, list[PlannedJob]] = {}
    for job in jobs:
        by_vm.setdefault(job.vm, []).append(job)

    def size(vm: str) -> float:
        return sum(d.transfer_bytes / d.rate for j in by_vm[vm] for d in j.disks if d.rate)

    profile = _Profile(limits, pool_egress, resolution)
    delays: dict[str, float] = {}
    for vm in sorted(by_vm, key=lambda v: (-size(v), v)):
        best: tuple[tuple[int, float], float, list[PlannedJob]] | None = None
        for k in range(int(spread_hours * 60 // step_minutes) + 1):
            delay = k * step_minutes * 60.0
            moved = [replace(j, due=j.due + delay) for j in by_vm[vm]]
            if k and any(j.latest_start is not None and j.due >= j.latest_start for j in moved):
                break  # past the window: later delays are too
            score = profile.score(moved)
            if (
                best is None
                or score[0] < best[0][0]
                or (score[0] == best[0][0] and score[1] < best[0][1] - 1e-9)
            ):
                best = (score, delay, moved)
        assert best is not None
        profile.add(best[2])
        delays[vm] = best[1]
    placed = [replace(j, due=j.due + delays[j.vm]) for j in jobs]
    starts: dict[str, float] = {}
    for job in placed:
        starts[job.vm] = min(starts.get(job.vm, job.due), job.due)
    return Proposal(starts, delays, before, simulate(placed, limits, pool_egress))
