"""The planner (a day's schedule simulated, its load chart) and the month's cost."""

from __future__ import annotations

import re
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Query, Response

from vmvault.app.snapshots import pool_usage
from vmvault.errors import COST_MODEL_OFF, CostModelOff, UsageError
from vmvault.planning.chart import render_load_chart
from vmvault.planning.runner import cost_report, run_plan
from vmvault.server.api.schemas import Reader, State

if TYPE_CHECKING:
    from vmvault.inventory import Inventory

router = APIRouter()


class InvalidDay(UsageError):
    """A ``day`` the planner cannot simulate: as FastAPI's own validation errors, 422."""

    code = "invalid_request"
    http_status = 422


# The planner simulates days this close to today: far enough for any schedule, near enough
# that the day's arithmetic (a day after it, timetables, charts) stays within datetime's range.
PLAN_RANGE = timedelta(days=3653)  # ten years


def _plan_day(day: str | None) -> datetime:
    if day is None:
        return datetime.now(UTC) + timedelta(days=1)
    if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", day):
        raise InvalidDay(f"day: {day!r} is not YYYY-MM-DD")
    try:
        chosen = datetime.fromisoformat(day).replace(tzinfo=UTC)
    except ValueError:
        raise InvalidDay(f"day: {day!r} is not a date") from None
    if abs(chosen.date() - datetime.now(UTC).date()) > PLAN_RANGE:
        raise InvalidDay(f"day: {day} is out of range: choose a day within 10 years of today")
    return chosen


DayQuery = Annotated[
    str | None, Query(max_length=10, description="YYYY-MM-DD (UTC); default tomorrow.")
]


def _budgets(inventory: Inventory) -> dict[str, float]:
    """Each pool's egress budget (MB/s): what the planner's load is measured against."""
    return {name: p.egress_mb_per_s for name, p in inventory.pools.items()}


@router.get("/plan", tags=["planner"])
def plan(state: State, _: Reader, day: DayQuery = None, stagger: bool = False) -> dict[str, Any]:
    """Tomorrow's (or ``day``'s) schedule simulated: starts, ends, pool load against the
    pool's budget (``budget_mb_s``, null for disks without a pool), findings."""

    inventory = state.inventory()
    result = run_plan(state.ctx, inventory, _plan_day(day), stagger=stagger)
    result["instant_restore"] = pool_usage(inventory)  # what each pool's snapshots hold now
    budgets = _budgets(inventory)
    for name, pool in result["pools"].items():
        pool["budget_mb_s"] = budgets.get(name)
    return result


@router.get(
    "/plan/chart.svg",
    tags=["planner"],
    response_class=Response,
    responses={200: {"content": {"image/svg+xml": {}}}},
)
def plan_chart(state: State, _: Reader, day: DayQuery = None) -> Response:
    """Each pool's load over the day against its budget, as an SVG chart."""

    inventory = state.inventory()
    result = run_plan(state.ctx, inventory, _plan_day(day))
    with tempfile.TemporaryDirectory() as tmp:
        path = render_load_chart(result, Path(tmp) / "load.svg", _budgets(inventory))
        return Response(path.read_bytes(), media_type="image/svg+xml")


@router.get("/cost", tags=["cost"])
def cost(
    state: State,
    _: Reader,
    currency: Annotated[str | None, Query(pattern=r"^[A-Z]{3}$")] = None,
) -> dict[str, Any]:
    """This month's bill per VM: protected instances by size tier, and vault storage, with
    the inventory's ``[pricing]`` table."""

    pricing = state.inventory().pricing
    if not pricing.enabled:
        raise CostModelOff(COST_MODEL_OFF)
    prices = pricing.table()
    return cost_report(state.ctx, currency=currency, prices=prices).to_dict()
