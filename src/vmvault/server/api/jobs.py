"""Jobs: listed with live progress, one by id, cancelled."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from vmvault.jobs.queue import job_doc
from vmvault.server.api.schemas import Limit, Offset, Operator, Reader, RowId, State, page

router = APIRouter()


@router.get("/jobs", tags=["jobs"])
def list_jobs(
    state: State,
    _: Reader,
    offset: Offset = 0,
    limit: Limit = 50,
    job_state: Annotated[str | None, Query(alias="state", max_length=32)] = None,
    vm: Annotated[str | None, Query(max_length=255)] = None,
) -> dict[str, Any]:
    """Jobs, newest first, with live progress for running ones."""
    total, rows = state.catalog.job_page(
        state.vault_id, state=job_state, vm=vm, offset=offset, limit=limit
    )
    return page([job_doc(j) for j in rows], total, offset, limit)


@router.get("/jobs/{job_id}", tags=["jobs"])
def get_job(job_id: RowId, state: State, _: Reader) -> dict[str, Any]:
    return job_doc(state.queue.get(job_id))


@router.post("/jobs/{job_id}/cancel", tags=["jobs"])
def cancel_job(job_id: RowId, state: State, _: Operator) -> dict[str, Any]:
    outcome = state.queue.cancel(job_id)
    return {**job_doc(state.queue.get(job_id)), "outcome": outcome}
