"""Run endpoints: read a run by id, cancel it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.deps import Caller, CallerDep
from app.errors import RunNotFoundError, RunTerminalError
from app.routers.models.problem import answers, errors
from app.routers.models.runs import BulkCancelOut, RunOut
from app.routers.schemas import BulkCancelIn
from app.routers.sessions import IdempotencyKey
from app.sessions.ref import SessionRef

router = APIRouter(prefix="/v1/runs", tags=["runs"])

CANCEL_WAIT_SECONDS = 5.0


@router.post(
    "/cancel",
    summary="Cancel many runs",
    response_model=None,
    responses=answers(BulkCancelOut, 404),
)
async def cancel_runs(body: BulkCancelIn, caller: CallerDep) -> dict[str, Any]:
    """Cancel many runs: the ones named, or a session's queued, running or all runs.
    Answers per run: cancelled, cancel_requested, not_found or already_ended."""
    resources = caller.resources
    if body.session_id is not None:
        session = SessionRef.of(caller.tenant, body.session_id)
        view = await resources.reads.view(session)
        run_ids = []
        if body.status in ("running", "all") and view.active_run is not None:
            run_ids.append(view.active_run.run_id)
        if body.status in ("queued", "all"):
            run_ids += [run.run_id for run in view.queued]
    else:
        run_ids = list(dict.fromkeys(body.run_ids or []))
    return {"results": [await _cancel_one(caller, run_id) for run_id in run_ids]}


async def _cancel_one(caller: Caller, run_id: str) -> dict[str, Any]:
    control, reads = caller.resources.control, caller.resources.reads
    try:
        now = await control.cancel(reads.locate(run_id, caller.tenant), run_id)
    except RunNotFoundError:
        return {"run_id": run_id, "outcome": "not_found"}
    except RunTerminalError as ended:
        return {"run_id": run_id, "outcome": "already_ended", "status": ended.run_status}
    return {"run_id": run_id, "outcome": "cancelled" if now else "cancel_requested"}


@router.get(
    "/{run_id}",
    summary="Read a run",
    description="The run, if it belongs to the caller's tenant.",
    response_model=None,
    responses=answers(RunOut, 404),
)
async def get_run(run_id: str, caller: CallerDep) -> dict[str, Any]:
    reads = caller.resources.reads
    return (await reads.get_run(reads.locate(run_id, caller.tenant), run_id)).public()


@router.post(
    "/{run_id}/cancel",
    summary="Cancel a run",
    response_model=None,
    responses=answers(RunOut, 404, description="Cancelled: the run as it ended.")
    | {202: {"model": RunOut, "description": "Cancel requested; the run has not ended yet."}}
    | errors(**{"409": "The run already ended (`run_status`)."}),
)
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
