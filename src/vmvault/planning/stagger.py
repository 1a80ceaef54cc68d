"""Propose staggered start times that lower each pool's peak load.

Greedy, and explained in one paragraph: take the backups from the largest to the smallest;
give each, in turn, the start (its own time, or a later one in steps of ``step_minutes``
within ``spread_hours``) that gives the lowest highest pool load of the day simulated so
far, preferring the earliest start among equals. Every candidate day is simulated with the
scheduler's own admission rules (`simulate`), so a proposal never breaks a limit the
scheduler would enforce. An ILP would find the optimum; with one simulation per candidate
the greedy stays fast and explainable, and the result is shown before and after.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from vmvault.jobs.admission import Limits
from vmvault.planning.simulate import PlannedJob, Simulation, simulate


@dataclass(frozen=True)
class Proposal:
    starts: dict[str, float]  # VM -> proposed start (seconds from the day's start)
    peak_before: dict[str, float]  # pool -> peak bytes/s
    peak_after: dict[str, float]


def _worst(sim: Simulation) -> float:
    return max((sim.peak(p) for p in sim.pool_load), default=0.0)


def stagger(
    jobs: Sequence[PlannedJob],
    limits: Limits,
    pool_egress: dict[str, float],
    *,
    step_minutes: int = 30,
    spread_hours: float = 6.0,
) -> Proposal:
    before = simulate(jobs, limits, pool_egress)
    order = sorted(jobs, key=lambda j: -sum(d.transfer_bytes / d.rate for d in j.disks))
    placed: list[PlannedJob] = []
    for job in order:
        best: tuple[float, float, PlannedJob] | None = None
        for k in range(int(spread_hours * 60 // step_minutes) + 1):
            candidate = replace(job, due=job.due + k * step_minutes * 60)
            score = _worst(simulate([*placed, candidate], limits, pool_egress))
            if best is None or score < best[0] - 1e-6:
                best = (score, candidate.due, candidate)
        assert best is not None
        placed.append(best[2])
    after = simulate(placed, limits, pool_egress)
    return Proposal(
        {j.vm: j.due for j in placed},
        {p: before.peak(p) for p in before.pool_load},
        {p: after.peak(p) for p in after.pool_load},
    )
