"""AG-UI: a frontend posts a `RunAgentInput` and reads the run's AG-UI events.

Everything that can refuse the message (an invalid body or thread id, an unknown agent,
no user text, a busy thread under `reject`, a full queue) is answered as a problem before
the stream starts. The stream is built from the session's event stream in Redis, so any
worker serves it, whichever runs the run.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Literal

from ag_ui.core import BaseEvent, RunAgentInput
from ag_ui.encoder import EventEncoder
from fastapi import APIRouter, Header, Path, Query
from sse_starlette import EventSourceResponse
from starlette.types import Message

from app import logs
from app.agui.follow import REPLAY_ALL, follow_run
from app.agui.message import read_message
from app.deps import CallerDep
from app.errors import LeasegateError, RunTerminalError
from app.resources import Resources
from app.routers.models.problem import errors
from app.routers.sessions import IdempotencyKey
from app.sessions.models import BusyPolicy, NewRun
from app.sessions.ref import SessionRef

log = logging.getLogger(__name__)

_OnClose = Callable[[Message], Awaitable[None]]

router = APIRouter(prefix="/v1/agents", tags=["ag-ui"])

PING = 15.0  # seconds between keep-alive comments, e.g. while the run waits in the queue

AgentIdPath = Annotated[str, Path(min_length=1, max_length=64)]
BusyPolicyQuery = Annotated[
    BusyPolicy | None,
    Query(description="When the thread is busy; else forwardedProps.leasegate.busy_policy."),
]
OnDisconnect = Annotated[
    Literal["continue", "cancel"],
    Query(description="What a client that disconnects mid-run does to the run."),
]


@router.post(
    "/{agent_id}/ag-ui",
    response_class=EventSourceResponse,
    summary="Run an agent for an AG-UI frontend",
    description=(
        "Post an AG-UI `RunAgentInput`; the answer streams the run's AG-UI events. Whatever "
        "refuses the message is a problem document before the stream starts."
    ),
    responses=errors(409, 429),
)
async def run_agent(
    agent_id: AgentIdPath,
    body: RunAgentInput,
    caller: CallerDep,
    busy_policy: BusyPolicyQuery = None,
    on_disconnect: OnDisconnect = "continue",
    idempotency_key: IdempotencyKey = None,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> EventSourceResponse:
    resources = caller.resources
    asked = read_message(body, busy_policy=busy_policy, idempotency_key=idempotency_key)
    logs.bind(session=asked.thread_id)
    session = SessionRef.of(caller.tenant, asked.thread_id)
    new = NewRun(
        text=asked.text,
        agent_id=resources.agents.resolve(agent_id),
        busy_policy=asked.busy_policy or BusyPolicy(resources.settings.default_busy_policy),
        metadata=asked.metadata,
        idempotency_key=asked.idempotency_key,
    )
    after = await resources.reads.last_event_id(session)
    admission = (await resources.sessions.submit(session, new)).admission
    run_id = admission.run_id
    log.debug("ag-ui: run %s for the frontend's run %s", run_id, asked.client_run_id)
    ended = admission.run if admission.run and admission.run.status.terminal else None
    events = follow_run(
        resources.reads,
        resources.hub,
        session,
        run_id,
        after=REPLAY_ALL if admission.duplicate else after,
        ended=ended,
    )
    encoder = EventEncoder(accept=accept or "text/event-stream")
    on_close = _canceller(resources, session, run_id) if on_disconnect == "cancel" else None
    return EventSourceResponse(
        _encoded(events, encoder),
        media_type=encoder.get_content_type(),
        ping=PING,
        send_timeout=30,
        client_close_handler_callable=on_close,
    )


async def _encoded(events: AsyncIterator[BaseEvent], encoder: EventEncoder) -> AsyncIterator[bytes]:
    async for event in events:
        yield encoder.encode(event).encode()


def _canceller(resources: Resources, session: SessionRef, run_id: str) -> _OnClose:
    async def cancel(_: Message) -> None:
        try:
            await resources.control.cancel(session, run_id, reason="client_disconnected")
        except RunTerminalError:
            pass  # it ended meanwhile
        except LeasegateError as exc:
            log.warning("run %s: not cancelled after its client left: %s", run_id, exc)
        else:
            log.info("run %s: cancelled, its AG-UI client disconnected", run_id)

    return cancel
