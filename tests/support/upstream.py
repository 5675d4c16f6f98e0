"""A scriptable OpenAI-compatible upstream, served on a real loopback port in the test's loop.

    upstream = FakeUpstream()
    upstream.status(500, {"error": {"message": "overloaded"}}).stream(["Hel", "lo"])
    async with running_upstream(upstream) as base_url:   # http://127.0.0.1:PORT/v1
        ...
    upstream.requests[1].json["messages"]

Each request to `POST /v1/chat/completions` takes the next planned reply (`otherwise`, or
a 500, once the plan is used up) and is recorded with its headers and JSON body. A request
with a key `refuse(key, ...)` names is refused instead, for as long as the rule says:

    upstream.refuse("key-of-a", 429, headers={"retry-after": "2"}, seconds=2)
    upstream.otherwise = Reply(deltas=("ok",))
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn

from app.redis.server import free_port

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Message, Receive, Send], Awaitable[None]]

PATH = "/v1/chat/completions"
START_TIMEOUT = 5.0
POLL = 0.005


@dataclass(frozen=True, slots=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]
    json: Any
    client_port: int | None


@dataclass(frozen=True, slots=True)
class Reply:
    """One planned answer: a JSON refusal, or a stream of deltas (or raw SSE text)."""

    status: int = 200
    body: Any = None
    deltas: tuple[str, ...] = ()
    raw: str | None = None
    hold: asyncio.Event | None = None
    """After the deltas, wait for this event (or for the client to leave)."""
    done: bool = True
    """End a stream with `data: [DONE]`."""
    drop: bool = False
    """Cut the connection after the deltas instead of ending the response."""
    echo_authorization: bool = False
    """Append the Authorization header received to the error message (as careless servers do)."""
    set_cookie: str | None = None
    """A `Set-Cookie` header to send with a stream."""
    headers: tuple[tuple[str, str], ...] = ()
    """More headers of a refusal (`retry-after`...)."""

    @property
    def streams(self) -> bool:
        return self.status == 200 and self.body is None


class FakeUpstream:
    def __init__(self) -> None:
        self.plan: deque[Reply] = deque()
        self.requests: list[Received] = []
        self.disconnects = 0
        self.base_url = ""
        """Set by whoever serves it."""
        self.otherwise: Reply | None = None
        """The reply once the plan is used up; None: a 500."""
        self.refusals: dict[str, tuple[Reply, float | None]] = {}
        """API key -> (its refusal, until when on the monotonic clock; None: for ever)."""

    def stream(
        self,
        deltas: list[str],
        *,
        hold: asyncio.Event | None = None,
        done: bool = True,
        drop: bool = False,
        set_cookie: str | None = None,
    ) -> FakeUpstream:
        return self.add(
            Reply(deltas=tuple(deltas), hold=hold, done=done, drop=drop, set_cookie=set_cookie)
        )

    def raw_stream(self, text: str) -> FakeUpstream:
        """A 200 event stream whose body is exactly `text`."""
        return self.add(Reply(raw=text, done=False))

    def status(
        self,
        code: int,
        body: Any = None,
        *,
        times: int = 1,
        echo_authorization: bool = False,
        headers: dict[str, str] | None = None,
    ) -> FakeUpstream:
        body = {"error": {"message": f"status {code}"}} if body is None else body
        extra = tuple((headers or {}).items())
        for _ in range(times):
            self.add(Reply(code, body, echo_authorization=echo_authorization, headers=extra))
        return self

    def refuse(
        self,
        api_key: str,
        code: int,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        seconds: float | None = None,
    ) -> FakeUpstream:
        """Refuse every request with this key, for `seconds` from now (None: until lifted)."""
        body = {"error": {"message": f"status {code}"}} if body is None else body
        until = None if seconds is None else time.monotonic() + seconds
        self.refusals[api_key] = (Reply(code, body, headers=tuple((headers or {}).items())), until)
        return self

    def keys_used(self) -> list[str]:
        """The API key of each request, in order."""
        return [r.headers.get("authorization", "").removeprefix("Bearer ") for r in self.requests]

    def drop_connection(self) -> FakeUpstream:
        """Send the 200 headers, then cut the connection before any event."""
        return self.add(Reply(drop=True, done=False))

    def add(self, reply: Reply) -> FakeUpstream:
        self.plan.append(reply)
        return self

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = await _read_body(receive)
        received = Received(
            scope["method"],
            scope["path"],
            {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]},
            json.loads(body) if body else None,
            scope["client"][1] if scope.get("client") else None,
        )
        self.requests.append(received)
        reply = self._next(received)
        if reply.streams:
            await self._send_stream(reply, receive, send)
        else:
            await _send_json(send, reply.status, _error_body(reply, received), reply.headers)

    def _next(self, received: Received) -> Reply:
        if received.method != "POST" or received.path != PATH:
            return Reply(404, {"error": {"message": f"no route {received.path}"}})
        key = received.headers.get("authorization", "").removeprefix("Bearer ")
        refusal, until = self.refusals.get(key, (None, None))
        if refusal is not None and (until is None or time.monotonic() < until):
            return refusal
        if self.plan:
            return self.plan.popleft()
        if self.otherwise is not None:
            return self.otherwise
        return Reply(500, {"error": {"message": "the fake upstream has nothing planned"}})

    async def _send_stream(self, reply: Reply, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        if reply.set_cookie is not None:
            headers.append((b"set-cookie", reply.set_cookie.encode("latin-1")))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for event in _events(reply):
            await send({"type": "http.response.body", "body": event.encode(), "more_body": True})
        if reply.hold is not None and not await self._held(reply.hold, receive):
            return
        if reply.drop:
            return  # returning mid-response makes the server close the connection
        tail = "data: [DONE]\n\n" if reply.done else ""
        await send({"type": "http.response.body", "body": tail.encode(), "more_body": False})

    async def _held(self, event: asyncio.Event, receive: Receive) -> bool:
        """Wait for `event`; False if the client disconnected first."""
        released = asyncio.ensure_future(event.wait())
        left = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait({released, left}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (released, left):
                task.cancel()
            await asyncio.gather(released, left, return_exceptions=True)
        if left.cancelled() or left.exception() is not None:
            return True
        self.disconnects += 1
        return False


def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> str:
    """One chat-completion chunk as an SSE event."""
    data = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }
    return f"data: {json.dumps(data)}\n\n"


def _events(reply: Reply) -> list[str]:
    if reply.raw is not None:
        return [reply.raw]
    if not reply.deltas:
        return []
    contents = [chunk({"content": delta}) for delta in reply.deltas]
    return [chunk({"role": "assistant", "content": ""}), *contents, chunk({}, "stop")]


def _error_body(reply: Reply, received: Received) -> Any:
    if not reply.echo_authorization:
        return reply.body
    authorization = received.headers.get("authorization", "")
    return {"error": {"message": f"{reply.body['error']['message']} ({authorization})"}}


async def _read_body(receive: Receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += bytes(message.get("body", b""))
        if not message.get("more_body"):
            return body


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _send_json(
    send: Send, status: int, body: Any, extra: tuple[tuple[str, str], ...] = ()
) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(payload))]
    headers += [(name.encode("latin-1"), value.encode("latin-1")) for name, value in extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


@asynccontextmanager
async def running_upstream(app: ASGIApp, *, timeout: float = START_TIMEOUT) -> AsyncIterator[str]:
    """Serve `app` on a free loopback port in this event loop; yields the `/v1` base URL."""
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        log_config=None,
        lifespan="off",
        ws="none",
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        await _until_started(server, task, timeout)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        await task


async def _until_started(server: uvicorn.Server, task: asyncio.Task[None], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not server.started:
        if task.done():
            task.result()
            raise AssertionError("the fake upstream stopped before it started")
        if time.monotonic() > deadline:
            raise AssertionError(f"the fake upstream did not start within {timeout}s")
        await asyncio.sleep(POLL)
