"""Real AG-UI agents for the tests: Pydantic AI agents on a FunctionModel (no LLM), served
over AG-UI by pydantic-ai's adapter and uvicorn, in a process of their own.

    with running_agui_agent(tmp_path / "agent.log") as agent:
        agent.url("/tool")                       # an agents file's `url`
        await agent.records("session-1")         # what each request to it carried

    POST /tool          calls a tool (`lookup`), then answers "the tool said: found <text>"
    POST /echo          answers "echo: <text>" after a short pause (runs that could overlap)
    POST /slow          streams "tick " every 50 ms for a minute (a run to stop)
    POST /refuse-http   429 for the subscription whose key is REFUSED_KEY, else as /echo
    POST /refuse-event  RUN_ERROR code `rate_limit` for that subscription, else as /echo
    POST /invalid       a TEXT_MESSAGE_CONTENT event without its delta
    POST /unfinished    some text, then the stream ends without RUN_FINISHED
    GET  /records       one record per request: path, thread and run ids, the Leasegate-Fence
                        and Idempotency-Key headers, the messages, the subscription id, how
                        it ended (`completed` or `disconnected`), and per thread the most
                        requests it had in flight at once (and the Authorization header, for
                        headers_env)

Run as `python -m tests.support.agui_agent --port N`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from ag_ui.core import (
    RunErrorEvent,
    RunFinishedEvent,
    RunStartedEvent,
    TextMessageContentEvent,
    TextMessageStartEvent,
)
from ag_ui.encoder import EventEncoder
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelRequest, ToolReturnPart, UserPromptPart
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel
from pydantic_ai.ui.ag_ui import AGUIAdapter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.support.processes import serving_module

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Message, Receive, Send], Awaitable[None]]

REFUSED_KEY = "key-of-a"
"""The subscription key /refuse-http and /refuse-event refuse."""
ECHO_PAUSE = 0.02
TICK = 0.05


# -- the agents --------------------------------------------------------------------------


def _last_user_text(messages: list[ModelMessage]) -> str:
    for message in reversed(messages):
        if isinstance(message, ModelRequest):
            for part in message.parts:
                if isinstance(part, UserPromptPart) and isinstance(part.content, str):
                    return part.content
    return ""


async def _tool_model(
    messages: list[ModelMessage], info: AgentInfo
) -> AsyncIterator[str | DeltaToolCalls]:
    last = messages[-1]
    returns = [p for p in getattr(last, "parts", []) if isinstance(p, ToolReturnPart)]
    if returns:
        yield f"the tool said: {returns[0].content}"
        return
    arguments = json.dumps({"q": _last_user_text(messages)})
    yield {0: DeltaToolCall(name="lookup", json_args=arguments, tool_call_id="call-1")}


async def _echo_model(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
    await asyncio.sleep(ECHO_PAUSE)  # the agent's own work: long enough for runs to overlap
    yield "echo: "
    yield _last_user_text(messages)


async def _slow_model(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
    for _ in range(1200):
        yield "tick "
        await asyncio.sleep(TICK)


def _tool_agent() -> Agent[None, str]:
    agent = Agent(FunctionModel(stream_function=_tool_model))

    @agent.tool_plain
    def lookup(q: str) -> str:
        return f"found {q}"

    return agent


TOOL = _tool_agent()
ECHO = Agent(FunctionModel(stream_function=_echo_model))
SLOW = Agent(FunctionModel(stream_function=_slow_model))


def _served(agent: Agent[None, str]) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        return await AGUIAdapter.dispatch_request(request, agent=agent)

    return endpoint


def _refusing(how: str) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        body = json.loads(await request.body())
        subscription = body.get("forwardedProps", {}).get("leasegate", {}).get("subscription")
        if not subscription or subscription.get("api_key") != REFUSED_KEY:
            return await AGUIAdapter.dispatch_request(request, agent=ECHO)
        if how == "http":
            return JSONResponse({"error": {"message": "rate limit reached"}}, status_code=429)
        started = RunStartedEvent(thread_id=body["threadId"], run_id=body["runId"])
        refused = RunErrorEvent(message="quota of this key is used up", code="rate_limit")
        return _sse([EventEncoder().encode(started), EventEncoder().encode(refused)])

    return endpoint


async def _invalid(request: Request) -> Response:
    body = json.loads(await request.body())
    no_delta = 'data: {"type": "TEXT_MESSAGE_CONTENT", "messageId": "m1"}\n\n'
    return _sse([*_opening(body), no_delta, EventEncoder().encode(_finished(body))])


async def _unfinished(request: Request) -> Response:
    body = json.loads(await request.body())
    content = TextMessageContentEvent(message_id="m1", delta="partial")
    return _sse([*_opening(body), EventEncoder().encode(content)])


def _opening(body: dict[str, Any]) -> list[str]:
    started = RunStartedEvent(thread_id=body["threadId"], run_id=body["runId"])
    message = TextMessageStartEvent(message_id="m1", role="assistant")
    return [EventEncoder().encode(started), EventEncoder().encode(message)]


def _finished(body: dict[str, Any]) -> RunFinishedEvent:
    return RunFinishedEvent(thread_id=body["threadId"], run_id=body["runId"])


def _sse(events: list[str]) -> Response:
    async def chunks() -> AsyncIterator[str]:
        for event in events:
            yield event

    return StreamingResponse(chunks(), media_type="text/event-stream")


# -- what the agents received ------------------------------------------------------------


class Recorder:
    """ASGI wrapper recording every POST: what it carried, how many per thread ran at once,
    and whether its client left before the response ended."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.records: list[dict[str, Any]] = []
        self.in_flight: dict[str, int] = {}
        self.most_in_flight: dict[str, int] = {}

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        raw = await _read_body(receive)
        record = self._record(scope, raw)
        thread = record["thread_id"]
        self.in_flight[thread] = self.in_flight.get(thread, 0) + 1
        self.most_in_flight[thread] = max(
            self.most_in_flight.get(thread, 0), self.in_flight[thread]
        )
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": raw, "more_body": False}
            message = await receive()
            if message["type"] == "http.disconnect" and record["ended"] is None:
                record["ended"], record["ended_at"] = "disconnected", time.time()
            return message

        async def sent(message: Message) -> None:
            if message["type"] == "http.response.start":
                record["status"] = message["status"]
            await send(message)
            last = message["type"] == "http.response.body" and not message.get("more_body")
            if last and record["ended"] is None:
                record["ended"], record["ended_at"] = "completed", time.time()

        try:
            await self.app(scope, replay, sent)
        finally:
            self.in_flight[thread] -= 1
            if record["ended"] is None:
                record["ended"], record["ended_at"] = "completed", time.time()

    def _record(self, scope: Message, raw: bytes) -> dict[str, Any]:
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        try:
            body = json.loads(raw)
        except ValueError:
            body = {}
        leasegate = (body.get("forwardedProps") or {}).get("leasegate") or {}
        subscription = leasegate.get("subscription") or {}
        record: dict[str, Any] = {
            "path": scope["path"],
            "thread_id": body.get("threadId", ""),
            "run_id": body.get("runId"),
            "fence": headers.get("leasegate-fence"),
            "idempotency_key": headers.get("idempotency-key"),
            "authorization": headers.get("authorization"),
            "messages": [(m.get("role"), m.get("content")) for m in body.get("messages", [])],
            "raw_messages": body.get("messages", []),
            "leasegate": {k: v for k, v in leasegate.items() if k != "subscription"},
            "subscription": subscription.get("id"),
            "status": None,
            "ended": None,
            "ended_at": None,
        }
        self.records.append(record)
        return record

    async def report(self, request: Request) -> Response:
        return JSONResponse({"records": self.records, "most_in_flight": self.most_in_flight})


async def _read_body(receive: Receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += bytes(message.get("body", b""))
        if not message.get("more_body"):
            return body


def build_app() -> Recorder:
    routes = [
        Route("/tool", _served(TOOL), methods=["POST"]),
        Route("/echo", _served(ECHO), methods=["POST"]),
        Route("/slow", _served(SLOW), methods=["POST"]),
        Route("/refuse-http", _refusing("http"), methods=["POST"]),
        Route("/refuse-event", _refusing("event"), methods=["POST"]),
        Route("/invalid", _invalid, methods=["POST"]),
        Route("/unfinished", _unfinished, methods=["POST"]),
    ]
    starlette = Starlette(routes=routes)
    recorder = Recorder(starlette)
    starlette.add_route("/records", recorder.report, methods=["GET"])
    return recorder


# -- the process, as tests use it --------------------------------------------------------


@dataclass(frozen=True)
class AGUIAgentProcess:
    base_url: str

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    async def report(self) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=10) as http:
            response = await http.get(f"{self.base_url}/records")
        response.raise_for_status()
        report: dict[str, Any] = response.json()
        return report

    async def records(self, thread_id: str) -> list[dict[str, Any]]:
        """The requests of one thread (a leasegate session), in arrival order."""
        return [r for r in (await self.report())["records"] if r["thread_id"] == thread_id]

    async def most_in_flight(self, thread_id: str) -> int:
        most: dict[str, int] = (await self.report())["most_in_flight"]
        return most.get(thread_id, 0)


@contextmanager
def running_agui_agent(log_path: Path) -> Iterator[AGUIAgentProcess]:
    """The agents above in a process of their own on a free port, killed at the end."""
    with serving_module("tests.support.agui_agent", "/records", log_path, "AG-UI agent") as url:
        yield AGUIAgentProcess(url)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    port = parser.parse_args().port
    uvicorn.run(build_app(), host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
