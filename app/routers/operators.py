"""What operators read and do, behind the internal secret: sessions with work, workers,
agents, and the console's event stream.

Stop, reset and cancel answer exactly as their /v1 counterparts do (they are the same
calls, for any tenant), and each is logged with the operator's request id.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Path, Query
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse, ServerSentEvent

from app.console.feed import ConsoleFeed
from app.console.tokens import ConsoleTokens
from app.deps import Caller, ConsoleStreamDep, InternalDep, SessionCall, SessionIdPath
from app.errors import RedisUnavailableError
from app.middleware import SAFE_ID
from app.resources import Resources
from app.routers import runs as runs_router
from app.routers import sessions as sessions_router
from app.routers.models.operators import (
    AgentsOut,
    ConsoleTokenOut,
    SessionDetail,
    SessionsPage,
    WorkersOut,
)
from app.routers.models.problem import answers, errors
from app.routers.models.runs import RunOut
from app.routers.models.sessions import ResetOut, StoppedOut
from app.routers.sessions import IdempotencyKey
from app.sessions.ids import locate_run
from app.sessions.ref import SessionRef

log = logging.getLogger(__name__)

router = APIRouter(prefix="/internal", tags=["operators"])

PING = 15
RETRY_MS = 2000
LAST_RUNS = 10

TenantPath = Annotated[
    str,
    Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._\-]+$", description="The tenant."),
]
TenantQuery = Annotated[
    str | None,
    Query(
        min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._\-]+$", description="Only this tenant."
    ),
]
RequestId = Annotated[str | None, Header(include_in_schema=False)]


@router.get(
    "/workers",
    summary="List the workers alive",
    response_model=None,
    responses=answers(WorkersOut),
)
async def list_workers(resources: InternalDep) -> dict[str, Any]:
    """The workers alive: each renews its entry every LEASEGATE_WORKER_HEARTBEAT_SECONDS,
    and one that stops renewing drops out after three of them."""
    return {"workers": await resources.workers.alive()}


@router.get(
    "/sessions",
    summary="List sessions with work",
    response_model=None,
    responses=answers(SessionsPage),
)
async def list_sessions(
    resources: InternalDep,
    state: Annotated[Literal["busy", "all"], Query(description="`all`: idle ones too.")] = "busy",
    tenant: TenantQuery = None,
    cursor: Annotated[str | None, Query(max_length=400, description="`next_cursor`.")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    """Sessions from the index of sessions with work (admitted lately), oldest admission
    first, `limit` at a time: pass `next_cursor` on until it is null."""
    page = await resources.listing.page(
        busy_only=state == "busy", tenant=tenant, cursor=cursor, limit=limit
    )
    return {"sessions": page.sessions, "next_cursor": page.next_cursor}


@router.get(
    "/sessions/{tenant}/{session_id}",
    summary="Read any tenant's session",
    response_model=None,
    responses=answers(SessionDetail, 404),
)
async def get_session(
    tenant: TenantPath, session_id: SessionIdPath, resources: InternalDep
) -> dict[str, Any]:
    """The session as GET /v1/sessions/{id} shows it to its tenant, and its last runs."""
    session = SessionRef.of(tenant, session_id)
    view = (await resources.reads.view(session)).public()
    runs = await resources.reads.list_runs(session, 0, LAST_RUNS)
    return {"tenant": tenant, **view, "runs": [run.public() for run in runs]}


@router.post(
    "/sessions/{tenant}/{session_id}/stop",
    summary="Stop any tenant's session",
    response_model=None,
    responses=answers(StoppedOut, 404),
)
async def stop_session(
    tenant: TenantPath,
    session_id: SessionIdPath,
    resources: InternalDep,
    idempotency_key: IdempotencyKey = None,
    queued: Annotated[
        Literal["cancel", "keep"],
        Query(description="`keep` stops only the active run and lets the queue drain."),
    ] = "cancel",
    x_request_id: RequestId = None,
) -> dict[str, Any]:
    """As POST /v1/sessions/{id}/stop, for any tenant."""
    call = SessionCall(resources, SessionRef.of(tenant, session_id))
    answer = await sessions_router.stop_session(call, idempotency_key, queued)
    log.info(
        "operator stopped session %s/%s (request %s): cancelled %s",
        tenant,
        session_id,
        _request_id(x_request_id),
        answer["cancelled"],
    )
    return answer


@router.post(
    "/sessions/{tenant}/{session_id}/reset",
    summary="Reset any tenant's session",
    response_model=None,
    responses=answers(ResetOut, 404),
)
async def reset_session(
    tenant: TenantPath,
    session_id: SessionIdPath,
    resources: InternalDep,
    idempotency_key: IdempotencyKey = None,
    x_request_id: RequestId = None,
) -> dict[str, Any]:
    """As POST /v1/sessions/{id}/reset, for any tenant."""
    call = SessionCall(resources, SessionRef.of(tenant, session_id))
    answer = await sessions_router.reset_session(call, idempotency_key)
    log.info(
        "operator reset session %s/%s (request %s): generation %s, cancelled %s",
        tenant,
        session_id,
        _request_id(x_request_id),
        answer["generation"],
        answer["cancelled"],
    )
    return answer


@router.post(
    "/runs/{run_id}/cancel",
    summary="Cancel any tenant's run",
    response_model=None,
    responses=answers(RunOut, 404, description="Cancelled: the run as it ended.")
    | {202: {"model": RunOut, "description": "Cancel requested; the run has not ended yet."}}
    | errors(**{"409": "The run already ended (`run_status`)."}),
)
async def cancel_run(
    run_id: Annotated[str, Path(min_length=1, max_length=300)],
    resources: InternalDep,
    idempotency_key: IdempotencyKey = None,
    x_request_id: RequestId = None,
) -> JSONResponse:
    """As POST /v1/runs/{id}/cancel, for any tenant: 200 with the ended run, 202 while its
    holder is still stopping it."""
    tenant, _ = locate_run(run_id)
    answer = await runs_router.cancel_run(run_id, Caller(resources, tenant), idempotency_key)
    log.info(
        "operator cancelled run %s (request %s): %s",
        run_id,
        _request_id(x_request_id),
        json.loads(bytes(answer.body))["status"],
    )
    return answer


@router.get(
    "/agents",
    summary="List the agents",
    response_model=None,
    responses=answers(AgentsOut),
)
async def list_agents(resources: InternalDep) -> dict[str, Any]:
    """Every agent as GET /internal/agents/{id} shows it."""
    return {"agents": await _agents(resources)}


@router.post(
    "/console/token",
    summary="Get a console stream token",
    response_model=None,
    responses=answers(ConsoleTokenOut),
)
async def console_token(resources: InternalDep) -> dict[str, Any]:
    """A token that opens the console stream (`?token=`) for a minute: a browser's
    EventSource cannot send the secret in a header, and a URL is no place for it."""
    secret = resources.settings.internal_secret
    token, lifetime = ConsoleTokens(secret.get_secret_value() if secret else None).issue()
    return {"token": token, "expires_in": lifetime}


@router.get(
    "/console/stream",
    summary="Follow the console's feed",
    response_class=EventSourceResponse,
    responses=errors(401, 403, 404, 503),
)
async def console_stream(
    resources: ConsoleStreamDep, tenant: TenantQuery = None
) -> EventSourceResponse:
    """Server-sent events for the console: `snapshot` every LEASEGATE_CONSOLE_INTERVAL_SECONDS
    (busy sessions, recent runs, workers, agents and their events, counters),
    `run_finished` for each run that ended meanwhile, `unavailable` while Redis is."""
    feed = ConsoleFeed(
        resources.listing,
        resources.workers.alive,
        lambda: _agents(resources),
        lambda limit: resources.subscriptions.events(resources.agents.ids(), limit),
        tenant=tenant,
    )
    interval = resources.settings.console_interval_seconds

    async def events() -> AsyncIterator[ServerSentEvent]:
        while True:
            try:
                snapshot, ended = await feed.tick()
            except RedisUnavailableError as exc:
                yield ServerSentEvent(json.dumps({"detail": str(exc)}), event="unavailable")
            else:
                for run in ended:
                    yield ServerSentEvent(json.dumps(run), event="run_finished")
                yield ServerSentEvent(json.dumps(snapshot), event="snapshot", retry=RETRY_MS)
            await asyncio.sleep(interval)

    return EventSourceResponse(events(), ping=PING, send_timeout=30)


def _request_id(presented: str | None) -> str:
    """The request id the middleware kept (it replaces one that is not a safe id: JSON log
    lines carry that one in their `request_id` field)."""
    return presented if presented and SAFE_ID.fullmatch(presented) else "-"


async def _agents(resources: Resources) -> list[dict[str, Any]]:
    return [await resources.subscriptions.state(agent) for agent in resources.agents.ids()]
