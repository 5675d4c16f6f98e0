"""Session endpoints: post messages, read state, runs and transcript, stop and reset."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse

from app.agents import Turn
from app.agents.agui_wire import conversation
from app.deps import SessionCall, SessionDep
from app.errors import IdempotencyConflictError, LeasegateError, RedisUnavailableError
from app.routers.models.params import MAX_OFFSET, PLAIN_FLOAT, PLAIN_INT
from app.routers.models.problem import answers
from app.routers.models.runs import Admitted, RunOut, RunPage
from app.routers.models.sessions import (
    DeletedOut,
    ResetOut,
    SessionOut,
    StoppedOut,
    TranscriptOut,
)
from app.routers.schemas import MessageIn, SessionDefaultsIn
from app.sessions.models import Admission, NewRun
from app.sessions.service import Submitted
from app.subscriptions.exhausted import retry_after
from app.webhooks.targets import webhook_for

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])

WaitQuery = Annotated[
    float | None,
    Query(gt=0, le=60, description="Hold the response until the run ends."),
    PLAIN_FLOAT,
]


IdempotencyKey = Annotated[
    str | None,
    Header(
        min_length=1,
        max_length=200,
        description="Retrying with the same key within a minute answers as the first call did.",
    ),
]


OnDisconnect = Annotated[
    Literal["continue", "cancel"],
    Query(description="With `wait`: `cancel` cancels the run when the client goes away."),
]


@router.post(
    "/{session_id}/messages",
    status_code=202,
    summary="Post a message",
    description="Admit a message: start it, queue it, or refuse it by the busy policy.",
    response_model=None,
    responses=answers(
        Admitted,
        409,
        429,
        status=202,
        description="Admitted: `disposition` says what admission did.",
    )
    | {200: {"model": RunOut, "description": "With `wait`: the run, once it has ended."}},
)
async def post_message(
    body: MessageIn,
    call: SessionDep,
    request: Request,
    wait: WaitQuery = None,
    idempotency_key: IdempotencyKey = None,
    on_disconnect: OnDisconnect = "continue",
) -> JSONResponse:
    if body.idempotency_key and idempotency_key and body.idempotency_key != idempotency_key:
        raise IdempotencyConflictError("the Idempotency-Key header and body field differ")
    resources, session = call.resources, call.session
    new = NewRun(
        text=body.text,
        agent_id=resources.agents.resolve(body.agent_id),
        busy_policy=body.busy_policy,
        metadata=body.metadata,
        idempotency_key=body.idempotency_key or idempotency_key,
        webhook=webhook_for(resources.settings, body.webhook),
        priority=body.priority,
        start_within_seconds=body.start_within_seconds,
        collect_ms=body.collect_ms,
    )
    submitted = await resources.sessions.submit(session, new)
    admission = submitted.admission
    extra: dict[str, Any] = {"idempotent_replay": True} if admission.duplicate else {}
    if wait is not None:
        waiting = wait_for_end(call, submitted, wait)
        if on_disconnect == "cancel":
            waiting = cancel_on_disconnect(call, admission.run_id, waiting, request)
        ended = await waiting
        if ended is not None:
            headers = await retry_after(resources.subscriptions, ended)  # subscriptions_exhausted
            return JSONResponse(ended | extra, status_code=200, headers=headers)
    return JSONResponse(
        {
            "run_id": admission.run_id,
            "session_id": session.session_id,
            "status": admission.status.value,
            "queue_position": admission.queue_position,
            "disposition": admission.disposition,
        }
        | (
            {"superseded_run_ids": admission.superseded_run_ids}
            if admission.superseded_run_ids
            else {}
        )
        | _cut(admission)
        | extra,
        status_code=202,
    )


async def cancel_on_disconnect(
    call: SessionCall, run_id: str, waiting: Awaitable[dict[str, Any] | None], request: Request
) -> dict[str, Any] | None:
    """Wait as `waiting` does; if the client goes away first, cancel the run."""
    wait_task = asyncio.ensure_future(waiting)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({wait_task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if wait_task.done():
        return wait_task.result()
    wait_task.cancel()
    with contextlib.suppress(LeasegateError):
        await call.resources.control.cancel(call.session, run_id, reason="client_disconnected")
    return None


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def wait_for_end(
    call: SessionCall, submitted: Submitted, wait: float
) -> dict[str, Any] | None:
    """The admitted run once ended (None if it has not by then). Redis failing while we
    wait is no error: the message was admitted, and the 202 answer says which run it is."""
    admission = submitted.admission
    if admission.run is not None and admission.run.status.terminal:
        return admission.run.public()
    try:
        run = await call.resources.sessions.wait(
            call.session, admission.run_id, wait, local=submitted.local
        )
    except RedisUnavailableError:
        return None
    return run.public() if run.status.terminal else None


def _cut(admission: Admission) -> dict[str, Any]:
    """The run a message interrupted or rolled back, named after what it did."""
    if admission.interrupted_run_id is None:
        return {}
    name = "rolled_back_run_id" if admission.disposition == "rolled_back" else "interrupted_run_id"
    return {name: admission.interrupted_run_id}


@router.get(
    "/{session_id}",
    summary="Read a session",
    description="The session's state: its holder, active run, queue and defaults.",
    response_model=None,
    responses=answers(SessionOut, 404),
)
async def get_session(call: SessionDep) -> dict[str, Any]:
    return (await call.resources.reads.view(call.session)).public()


@router.patch(
    "/{session_id}",
    summary="Set a session's defaults",
    response_model=None,
    responses=answers(SessionOut, 404),
)
async def set_session_defaults(body: SessionDefaultsIn, call: SessionDep) -> dict[str, Any]:
    """The session's default busy policy and collect_ms, for messages that name none."""
    policy = body.busy_policy.value if body.busy_policy else None
    await call.resources.control.set_defaults(call.session, policy, body.collect_ms)
    return (await call.resources.reads.view(call.session)).public()


@router.get(
    "/{session_id}/runs",
    summary="List a session's runs",
    description="Newest first, a page at a time (`next_offset`).",
    response_model=None,
    responses=answers(RunPage, 404),
)
async def list_runs(
    call: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100), PLAIN_INT] = 20,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET), PLAIN_INT] = 0,
) -> dict[str, Any]:
    runs = await call.resources.reads.list_runs(call.session, offset, limit + 1)
    more = len(runs) > limit
    return {
        "session_id": call.session.session_id,
        "runs": [run.public() for run in runs[:limit]],
        "next_offset": offset + limit if more else None,
    }


@router.get(
    "/{session_id}/transcript",
    summary="Read a session's transcript",
    description="The current generation's turns in order, or its AG-UI messages.",
    response_model=None,
    responses=answers(TranscriptOut, 404),
)
async def get_transcript(
    call: SessionDep,
    format: Annotated[
        Literal["leasegate", "ag-ui"],
        Query(description="`ag-ui`: the conversation as AG-UI messages."),
    ] = "leasegate",
) -> dict[str, Any]:
    generation, turns = await call.resources.reads.transcript(call.session)
    answer = {"session_id": call.session.session_id, "generation": generation}
    if format == "ag-ui":
        messages = conversation([Turn(**turn) for turn in turns])
        return answer | {
            "messages": [m.model_dump(by_alias=True, exclude_none=True) for m in messages]
        }
    return answer | {"turns": turns}


@router.post(
    "/{session_id}/stop",
    summary="Stop a session",
    description="Cancel the active run and (unless `queued=keep`) every queued run.",
    response_model=None,
    responses=answers(StoppedOut, 404),
)
async def stop_session(
    call: SessionDep,
    idempotency_key: IdempotencyKey = None,
    queued: Annotated[
        Literal["cancel", "keep"],
        Query(description="`keep` stops only the active run and lets the queue drain."),
    ] = "cancel",
) -> dict[str, Any]:
    stopped = await call.resources.control.stop(
        call.session, idempotency_key, keep_queued=queued == "keep"
    )
    return {
        "session_id": call.session.session_id,
        "cancelled": stopped.cancelled,
        "kept": stopped.kept,
    }


@router.delete(
    "/{session_id}",
    summary="Delete a session",
    response_model=None,
    responses=answers(DeletedOut, 404),
)
async def delete_session(
    call: SessionDep, idempotency_key: IdempotencyKey = None
) -> dict[str, Any]:
    """Stop everything, then erase the session: its runs, transcript and events."""
    cancelled = await call.resources.control.delete(call.session, idempotency_key)
    return {"session_id": call.session.session_id, "deleted": True, "cancelled": cancelled}


@router.post(
    "/{session_id}/reset",
    summary="Reset a session",
    description="Stop it, then start a new generation with an empty transcript.",
    response_model=None,
    responses=answers(ResetOut, 404),
)
async def reset_session(call: SessionDep, idempotency_key: IdempotencyKey = None) -> dict[str, Any]:
    generation, cancelled = await call.resources.control.reset(call.session, idempotency_key)
    return {"session_id": call.session.session_id, "generation": generation, "cancelled": cancelled}
