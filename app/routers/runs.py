"""Run endpoints: read a run by id, cancel it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.deps import RunnerDep, StoreDep, TenantDep

router = APIRouter(prefix="/v1/runs", tags=["runs"])

CANCEL_WAIT_SECONDS = 5.0


@router.get("/{run_id}")
async def get_run(run_id: str, tenant: TenantDep, store: StoreDep) -> dict[str, Any]:
    session = store.locate(run_id, tenant)
    return (await store.get_run(session, run_id)).public()


@router.post("/{run_id}/cancel")
async def cancel_run(
    run_id: str, tenant: TenantDep, store: StoreDep, runner: RunnerDep
) -> JSONResponse:
    """A queued run is cancelled at once; a running one is stopped by its holder, whose
    outcome is awaited briefly (202 if it has not ended by then)."""
    session = store.locate(run_id, tenant)
    await store.cancel(run_id, tenant)
    run = await runner.wait(session, run_id, CANCEL_WAIT_SECONDS)
    return JSONResponse(run.public(), status_code=200 if run.status.terminal else 202)
