"""Run endpoints: read a run by id, cancel it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.deps import CallerDep
from app.routers.sessions import IdempotencyKey

router = APIRouter(prefix="/v1/runs", tags=["runs"])

CANCEL_WAIT_SECONDS = 5.0


@router.get("/{run_id}")
async def get_run(run_id: str, caller: CallerDep) -> dict[str, Any]:
    reads = caller.resources.reads
    return (await reads.get_run(reads.locate(run_id, caller.tenant), run_id)).public()


@router.post("/{run_id}/cancel")
async def cancel_run(
    run_id: str, caller: CallerDep, idempotency_key: IdempotencyKey = None
) -> JSONResponse:
    """A queued run is cancelled at once; a running one is stopped by its holder, whose
    outcome is awaited briefly (202 if it has not ended by then)."""
    resources = caller.resources
    session = resources.reads.locate(run_id, caller.tenant)
    await resources.control.cancel(session, run_id, idempotency_key)
    run = await resources.sessions.wait(session, run_id, CANCEL_WAIT_SECONDS, local=False)
    return JSONResponse(run.public(), status_code=200 if run.status.terminal else 202)
