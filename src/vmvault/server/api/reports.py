"""Reports: "are we protected?" (the dashboard's tiles and charts) and the monthly report."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response

from vmvault.app.reports import monthly_report, site_summary
from vmvault.reports.charts import render_chart
from vmvault.reports.monthly import previous_month, to_csv, to_pdf
from vmvault.server.api.schemas import Reader, State

router = APIRouter()


@router.get("/reports/summary", tags=["reports"])
def report_summary(state: State, _: Reader) -> dict[str, Any]:
    """Per VM whether its newest point is within its RPO (its schedule's longest interval
    plus 25 %; not scheduled: no policy, or protection stopped); jobs that failed and
    succeeded in 24 h and 7 days; the vault's usage by its points and its growth in 7 days;
    dedup and compression ratios; stored bytes per day; per VM mean duration, throughput,
    success rate and change rate."""
    now = datetime.now(UTC)
    return site_summary(state.inventory(), state.vault, state.points(), state.catalog, now)


@router.get(
    "/reports/charts/{name}.svg",
    tags=["reports"],
    response_class=Response,
    responses={200: {"content": {"image/svg+xml": {}}}},
)
def report_chart(name: Literal["usage", "vms"], state: State, principal: Reader) -> Response:
    """``usage``: bytes stored per day and the vault's usage; ``vms``: per VM duration,
    throughput, success rate and change rate."""
    return Response(
        render_chart(name, report_summary(state, principal)), media_type="image/svg+xml"
    )


MonthQuery = Annotated[
    str | None, Query(max_length=7, description="YYYY-MM (UTC); default last month.")
]


@router.get(
    "/reports/monthly",
    tags=["reports"],
    response_class=Response,
    responses={200: {"content": {"text/csv": {}, "application/pdf": {}}}},
)
def report_monthly(
    state: State,
    _: Reader,
    month: MonthQuery = None,
    format: Literal["csv", "pdf"] = "csv",
) -> Response:
    """A month's row per VM: backups ok and failed, last good backup, stored and changed
    bytes, mean duration and throughput; as CSV or as a PDF (a table and a chart)."""
    chosen = month or previous_month(datetime.now(UTC))
    rows = monthly_report(chosen, state.inventory(), state.points(), state.catalog, state.vault_id)
    name = f"vmvault-{chosen}.{format}"
    headers = {"Content-Disposition": f'attachment; filename="{name}"'}
    if format == "csv":
        return Response(to_csv(rows), media_type="text/csv; charset=utf-8", headers=headers)
    return Response(to_pdf(chosen, rows), media_type="application/pdf", headers=headers)
