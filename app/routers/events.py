"""Server-sent events of a session's runs, served by any worker.

The stream is read from Redis (a bounded stream per session), so the worker serving it
need not be the one running the session. Readers wait on the session's channel through
the worker's one shared pub/sub connection, and read with pooled connections, so a
thousand readers on one worker cost no thousand Redis connections.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query
from sse_starlette import EventSourceResponse, ServerSentEvent

from app.deps import SessionDep
from app.errors import InvalidKeyError
from app.routers.models.problem import errors
from app.sessions.models import RunStatus
from app.sessions.tail import tail

router = APIRouter(prefix="/v1/sessions", tags=["events"])

EVENT_ID = re.compile(r"\d{1,20}-\d{1,20}")
EVENT_ID_PART_MAX = 2**64 - 1  # a Redis stream id is two unsigned 64-bit numbers


def valid_event_id(text: str) -> bool:
    """An id the stream can be read after: two 64-bit parts, short of the very last id."""
    if EVENT_ID.fullmatch(text) is None:
        return False
    parts = [int(part) for part in text.split("-")]
    return max(parts) <= EVENT_ID_PART_MAX and min(parts) < EVENT_ID_PART_MAX


PING = 15


@router.get(
    "/{session_id}/events",
    summary="Follow a session's events",
    description=(
        "Server-sent events of the session's runs (`queued`, `started`, `delta`, ...), each "
        "with an id; `Last-Event-ID` or `since` resumes after one (`since=0`: from the start). "
        "An id out of range is a 422 before the stream starts."
    ),
    response_class=EventSourceResponse,
    responses=errors(404),
)
async def session_events(
    call: SessionDep,
    last_event_id: Annotated[str | None, Header(max_length=50)] = None,
    since: Annotated[
        str | None, Query(max_length=50, description="Resume after this event id; 0 replays all.")
    ] = None,
) -> EventSourceResponse:
    resources, session = call.resources, call.session
    store = resources.reads
    await store.require(session)
    after = last_event_id or since
    if after is not None and after != "0" and not valid_event_id(after):
        raise InvalidKeyError(after, "an event id looks like 1700000000000-0")
    start = "0-0" if after == "0" else after or await store.last_event_id(session)

    async def events() -> AsyncIterator[ServerSentEvent]:
        async for batch in tail(store, resources.hub, session, start):
            for event_id, fields in batch:
                yield _sse(event_id, fields)

    return EventSourceResponse(events(), ping=PING, send_timeout=30)


LIFECYCLE = frozenset({"queued", "started", *(status.value for status in RunStatus)})


def _sse(event_id: str, fields: dict[str, str]) -> ServerSentEvent:
    kind = fields.get("type", "message")
    data: dict[str, Any] = {"type": kind, "run_id": fields.get("run_id", "")}
    if kind == "delta":
        data["text"] = fields.get("text", "")
    elif kind == "reset":
        data["generation"] = fields.get("text", "")
    elif kind not in LIFECYCLE:  # a structured event of the run: a tool call, state, ...
        data["data"] = json.loads(fields.get("text") or "{}")
    elif fields.get("text"):
        data["error"] = fields["text"]
    return ServerSentEvent(data=json.dumps(data), event=kind, id=event_id)
