"""The `ag-ui` backend: runs an agent served over the AG-UI protocol (an HTTP endpoint that
takes a RunAgentInput and answers a server-sent-event stream of AG-UI events).

Each run is one POST (`agui_wire` says what it carries) with the headers

    Accept: text/event-stream
    Idempotency-Key: <run id>      the same on a retry, so the agent can recognise one
    Leasegate-Fence: <fence>       the run's fence (runs outside a session send none)
    ...and the agent file's `headers_env` headers

Every event is validated with the `ag-ui-protocol` models; `events()` yields them all, in
order, and is where structured run events will come from. The reply is the text of the
TEXT_MESSAGE_CONTENT and TEXT_MESSAGE_CHUNK events; RUN_FINISHED completes the run, and
RUN_ERROR fails it. A refusal of the subscription raises SubscriptionFailureError (which
cools or disables it and switches the agent to its next subscription): an HTTP refusal is
classified as openai agents' are (`app.subscriptions.classify`: 429 `rate_limit`, 402
`quota`, 401 `auth`, the rate-limit headers giving the cooldown), and a RUN_ERROR with
code `rate_limit`, `quota` or `auth` is that kind. A stream that ends without RUN_FINISHED
or RUN_ERROR, or an event that does not validate, fails the run. Connection failures and
5xx answers are retried with backoff until the first event arrives, never after.

Cancellation (stop, cancel, interrupt, timeout, a lost lease) closes the response at once:
the connection is dropped and the agent sees its client leave.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from ag_ui.core import (
    Event,
    EventType,
    RunErrorEvent,
    RunFinishedCancelledOutcome,
    RunFinishedEvent,
    TextMessageChunkEvent,
    TextMessageContentEvent,
)

from app.agents.agui_wire import RunIds, parse_event, run_input
from app.agents.base import AgentRequest, RunEvent, Subscription
from app.agents.config import AgentConfig
from app.agents.upstream import (
    Retryable,
    error_text,
    read_capped,
    redact,
    retrying,
    short,
    sse_data,
    transport_failure,
    upstream_client,
    with_status,
)
from app.errors import AgentFailedError, ReloadFailedError, SubscriptionFailureError
from app.subscriptions.classify import classify

log = logging.getLogger(__name__)

REFUSAL_CODES = {"rate_limit": "rate_limit", "quota": "quota", "auth": "auth"}
"""RUN_ERROR codes that refuse the subscription, and the kind each is."""
EVENT_STREAM = "text/event-stream"


@dataclass(frozen=True, slots=True)
class _Call:
    """One run's request, as every attempt sends it."""

    body: str
    headers: dict[str, str]
    subscription: Subscription | None
    secrets: tuple[str, ...]


class AGUIAgent:
    """An agent served over AG-UI at the agents file's `url`."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        max_retries: int = 2,
        backoff_base: float = 0.2,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not config.url:
            raise ValueError(f"ag-ui agent {config.id!r} needs a url")
        self._config = config
        self._url = config.url
        self._what = f"ag-ui agent {config.id!r}"
        self._max_retries = max_retries
        self._backoff_base = backoff_base
        self._client = upstream_client(connect_timeout, read_timeout, transport, config.headers)

    async def stream(self, request: AgentRequest) -> AsyncIterator[str | RunEvent]:
        streamed = False
        async with contextlib.aclosing(self.events(request)) as events:
            async for event in events:
                if isinstance(event, TextMessageContentEvent | TextMessageChunkEvent):
                    if event.delta:
                        streamed = True
                        yield event.delta
                elif event.type not in _FRAMING:
                    streamed = True
                    yield _structured(event)
                elif isinstance(event, RunErrorEvent):
                    raise self._run_error(event, request, streamed=streamed)
                elif isinstance(event, RunFinishedEvent) and isinstance(
                    event.outcome, RunFinishedCancelledOutcome
                ):
                    raise AgentFailedError(f"{self._what} ended the run cancelled")

    async def events(self, request: AgentRequest) -> AsyncGenerator[Event, None]:
        """Every event of the run, validated, in order, up to its RUN_FINISHED or RUN_ERROR
        (the last one yielded). Raises for a refusal, a transport failure after the retries,
        an invalid event, or a stream that ends before either."""
        call = await self._call(request)
        events = retrying(
            lambda: self._attempt(call),
            max_retries=self._max_retries,
            backoff_base=self._backoff_base,
            what=self._what,
            agent_id=self._config.id,
        )
        async with contextlib.aclosing(events):
            async for event in events:
                yield event

    async def reload(self, subscription: Subscription) -> None:
        """POST the new subscription to the agent's `reload_url` (its `headers_env` headers
        go along); any answer but 2xx, or no answer, raises ReloadFailedError."""
        if not self._config.reload_url:
            raise ReloadFailedError(self._config.id, subscription.id, "no reload_url")
        body = {
            "agent_id": self._config.id,
            "subscription": {
                "id": subscription.id,
                "base_url": subscription.base_url,
                "api_key": subscription.api_key,
            },
        }
        secrets = tuple(s for s in (subscription.api_key, *self._config.headers.values()) if s)
        try:
            reply = await self._client.post(self._config.reload_url, json=body)
        except httpx.HTTPError as exc:
            detail = redact(short(str(exc)) or type(exc).__name__, secrets)
            raise ReloadFailedError(self._config.id, subscription.id, detail) from None
        if not reply.is_success:
            text, _ = error_text(_json_or_text(reply.content))
            detail = redact(with_status(reply.status_code, text), secrets)
            raise ReloadFailedError(self._config.id, subscription.id, detail)

    async def aclose(self) -> None:
        """Close the client now, streams still using it included."""
        await self._client.aclose()

    async def _call(self, request: AgentRequest) -> _Call:
        ids = RunIds.of(request)
        history = await request.history() if request.history is not None else []
        state = await request.state() if request.state is not None else {}
        body = run_input(request, history, ids, state).model_dump_json(by_alias=True)
        headers = {
            "Accept": EVENT_STREAM,
            "Content-Type": "application/json",
            "Idempotency-Key": ids.run_id,
        }
        if request.run is not None:
            headers["Leasegate-Fence"] = str(request.run.fence)
        return _Call(body, headers, request.subscription, self._secrets(request))

    async def _attempt(self, call: _Call) -> AsyncGenerator[Event, None]:
        """One POST. Raises Retryable only if it failed before its first event."""
        received = False
        try:
            async with self._client.stream(
                "POST", self._url, content=call.body, headers=call.headers
            ) as reply:
                if not reply.is_success:
                    raise await self._refusal(reply, call)
                self._check_event_stream(reply)
                async with contextlib.aclosing(sse_data(reply)) as payloads:
                    async for payload in payloads:
                        event = parse_event(payload, call.secrets)
                        if isinstance(event, str):
                            raise AgentFailedError(f"{self._what} sent {event}")
                        received = True
                        yield event
                        if isinstance(event, RunFinishedEvent | RunErrorEvent):
                            return
            ended = "after its last event" if received else "without any event"
            raise AgentFailedError(
                f"{self._what}: the event stream ended {ended}, before RUN_FINISHED or RUN_ERROR"
            )
        except httpx.HTTPError as exc:
            raise transport_failure(exc, call.secrets, produced=received, what=self._what) from None

    def _secrets(self, request: AgentRequest) -> tuple[str, ...]:
        """What no error message may contain: the subscription's key, the configured headers."""
        key = request.subscription.api_key if request.subscription else None
        return tuple(s for s in (key, *self._config.headers.values()) if s)

    def _check_event_stream(self, reply: httpx.Response) -> None:
        content_type = reply.headers.get("content-type", "")
        if not content_type.startswith(EVENT_STREAM):
            raise AgentFailedError(
                f"{self._what} answered {short(content_type) or 'without a content type'}, "
                f"not an event stream ({EVENT_STREAM})"
            )

    async def _refusal(self, reply: httpx.Response, call: _Call) -> Exception:
        """The error for a non-2xx answer, read from (at most a few KB of) its body."""
        raw = await read_capped(reply)
        parsed: Any
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = raw.decode("utf-8", "replace")
        text, hints = error_text(parsed)
        message = redact(text, call.secrets)
        status = reply.status_code
        if status >= 500:
            return Retryable(with_status(status, message))
        refusal = classify(status, hints, reply.headers)
        if refusal is not None and call.subscription is not None:
            return SubscriptionFailureError(
                refusal.kind, call.subscription.id, with_status(status, message), refusal.cooldown
            )
        return AgentFailedError(f"{self._what} refused the run ({with_status(status, message)})")

    def _run_error(
        self, event: RunErrorEvent, request: AgentRequest, *, streamed: bool
    ) -> Exception:
        message = redact(short(" ".join(event.message.split())), self._secrets(request))
        code = (event.code or "").lower()
        kind = REFUSAL_CODES.get(code)
        if kind is not None and request.subscription is not None and not streamed:
            return SubscriptionFailureError(kind, request.subscription.id, message)
        after = " after a partial reply" if streamed else ""
        with_code = f" (code {short(event.code)})" if event.code else ""
        return AgentFailedError(f"{self._what} failed{after}: {message or 'RUN_ERROR'}{with_code}")


def _json_or_text(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")


# Events that frame the run and its messages: leasegate makes its own.
_FRAMING = frozenset(
    {
        EventType.RUN_STARTED,
        EventType.RUN_FINISHED,
        EventType.RUN_ERROR,
        EventType.TEXT_MESSAGE_START,
        EventType.TEXT_MESSAGE_END,
    }
)


def _structured(event: Event) -> RunEvent:
    """A tool call, tool result, state change, step, reasoning or custom event of the agent,
    as a structured event of the run (its AG-UI fields, camelCase)."""
    data = event.model_dump(
        mode="json", by_alias=True, exclude_none=True, exclude={"type", "timestamp", "raw_event"}
    )
    return RunEvent(event.type.value.lower(), data)
