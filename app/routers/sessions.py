"""Session endpoints: post messages, read state, runs and transcript, stop and reset."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query
from fastapi.responses import JSONResponse

from app.deps import ResourcesDep, RunnerDep, SessionDep, StoreDep
from app.errors import IdempotencyConflictError
from app.routers.schemas import MessageIn
from app.sessions.models import BusyPolicy, NewRun

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])

WaitQuery = Annotated[
    float | None, Query(gt=0, le=60, description="Hold the response until the run ends.")
]


@router.post("/{session_id}/messages", status_code=202)
async def post_message(
    body: MessageIn,
    session: SessionDep,
    runner: RunnerDep,
    resources: ResourcesDep,
    wait: WaitQuery = None,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200)] = None,
) -> JSONResponse:
    if body.idempotency_key and idempotency_key and body.idempotency_key != idempotency_key:
        raise IdempotencyConflictError("the Idempotency-Key header and body field differ")
    new = NewRun(
        text=body.text,
        agent_id=resources.agents.resolve(body.agent_id),
        busy_policy=body.busy_policy or BusyPolicy(resources.settings.default_busy_policy),
        metadata=body.metadata,
        idempotency_key=body.idempotency_key or idempotency_key,
    )
    admission = await runner.submit(session, new)
    if wait is not None:
        run = await runner.wait(session, admission.run_id, wait)
        if run.status.terminal:
            return JSONResponse(run.public() | _replay(admission.duplicate), status_code=200)
    return JSONResponse(
        {
            "run_id": admission.run_id,
            "session_id": session.session_id,
            "status": admission.status.value,
            "queue_position": admission.queue_position,
        }
        | _replay(admission.duplicate),
        status_code=202,
    )


@router.get("/{session_id}")
async def get_session(session: SessionDep, store: StoreDep) -> dict[str, Any]:
    return (await store.view(session)).public()


@router.get("/{session_id}/runs")
async def list_runs(
    session: SessionDep,
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    runs = await store.list_runs(session, offset, limit + 1)
    more = len(runs) > limit
    return {
        "session_id": session.session_id,
        "runs": [run.public() for run in runs[:limit]],
        "next_offset": offset + limit if more else None,
    }


@router.get("/{session_id}/transcript")
async def get_transcript(session: SessionDep, store: StoreDep) -> dict[str, Any]:
    generation, turns = await store.transcript(session)
    return {"session_id": session.session_id, "generation": generation, "turns": turns}


@router.post("/{session_id}/stop")
async def stop_session(session: SessionDep, store: StoreDep) -> dict[str, Any]:
    return {"session_id": session.session_id, "cancelled": await store.stop(session)}


@router.post("/{session_id}/reset")
async def reset_session(session: SessionDep, store: StoreDep) -> dict[str, Any]:
    generation, cancelled = await store.reset(session)
    return {"session_id": session.session_id, "generation": generation, "cancelled": cancelled}


def _replay(duplicate: bool) -> dict[str, Any]:
    return {"idempotent_replay": True} if duplicate else {}
