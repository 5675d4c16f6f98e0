"""An AG-UI agent that holds its subscription itself, for the reload-gate tests, in a
process of its own.

The agent keeps, per agent id, the subscription it has loaded (`sub-a` at first); leasegate
changes it through `POST /reload` (the reload hook). Every run is answered with the
subscription it had loaded, and refused (429, `Retry-After: 60`) while that one is in
`refusing`: an upstream refusing the agent's own key.

    POST /agent      a run: "on <loaded>", then, if `metadata.hold_on` names the loaded
                     subscription, waits for `release` (or for its client to leave), then
                     "done" and RUN_FINISHED
    POST /reload     `{agent_id, subscription: {id, base_url, api_key}}`: loads it, or fails
                     (500) for a subscription in `reload_fail`; with `reload_hold` set, the
                     next reload waits for its client to leave and loads nothing
    POST /control    `{reset, refusing, reload_fail, reload_hold, release}`
    GET  /report     `{runs: [...], reloads: [...], loaded: {agent: subscription}}`; a run
                     record: run and thread ids, agent, the subscription forwarded and the
                     one loaded at its start and its end, outcome (refused, finished,
                     disconnected)

Run as `python -m tests.support.reload_agent --port N`. `LocalReloader` is the same agent
as a `python` one, in the test's process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from app.agents import AgentRequest
from app.agents.base import Subscription
from app.errors import SubscriptionFailureError
from tests.support.processes import serving_module

INITIAL = "sub-a"
DISCONNECT_POLL = 0.05


@dataclass
class State:
    loaded: dict[str, str] = field(default_factory=dict)
    refusing: set[str] = field(default_factory=set)
    reload_fail: set[str] = field(default_factory=set)
    reload_hold: bool = False
    release: asyncio.Event = field(default_factory=asyncio.Event)
    runs: list[dict[str, Any]] = field(default_factory=list)
    reloads: list[dict[str, Any]] = field(default_factory=list)


STATE = State()


def _event(kind: str, **fields: Any) -> str:
    return f"data: {json.dumps({'type': kind, **fields})}\n\n"


async def _agent(request: Request) -> Response:
    body = json.loads(await request.body())
    props = body["forwardedProps"]["leasegate"]
    agent = props["agent_id"]
    loaded = STATE.loaded.get(agent, INITIAL)
    record: dict[str, Any] = {
        "run_id": body["runId"],
        "thread_id": body["threadId"],
        "agent": agent,
        "forwarded": (props.get("subscription") or {}).get("id"),
        "loaded_at_start": loaded,
        "loaded_at_end": None,
        "outcome": "running",
    }
    STATE.runs.append(record)
    if loaded in STATE.refusing:
        record["outcome"] = "refused"
        return JSONResponse(
            {"error": {"message": "rate limit reached"}},
            status_code=429,
            headers={"Retry-After": "60"},
        )
    hold = (props.get("metadata") or {}).get("hold_on") == loaded

    async def events() -> AsyncIterator[str]:
        ids = {"threadId": body["threadId"], "runId": body["runId"]}
        try:
            yield _event("RUN_STARTED", **ids)
            yield _event("TEXT_MESSAGE_START", messageId="m1", role="assistant")
            yield _event("TEXT_MESSAGE_CONTENT", messageId="m1", delta=f"on {loaded}")
            if hold:
                await _until_released_or_gone(request)
            yield _event("TEXT_MESSAGE_CONTENT", messageId="m1", delta=", done")
            yield _event("TEXT_MESSAGE_END", messageId="m1")
            yield _event("RUN_FINISHED", **ids)
            record["outcome"] = "finished"
        finally:
            record["loaded_at_end"] = STATE.loaded.get(agent, INITIAL)
            if record["outcome"] == "running":
                record["outcome"] = "disconnected"

    return StreamingResponse(events(), media_type="text/event-stream")


async def _until_released_or_gone(request: Request) -> None:
    while not STATE.release.is_set():
        if await request.is_disconnected():
            raise asyncio.CancelledError
        with suppress(TimeoutError):
            async with asyncio.timeout(DISCONNECT_POLL):
                await STATE.release.wait()


async def _reload(request: Request) -> Response:
    body = json.loads(await request.body())
    subscription = body["subscription"]
    record = {"agent": body["agent_id"], "subscription": subscription["id"], "ok": False}
    record["api_key"] = subscription.get("api_key")
    STATE.reloads.append(record)
    if STATE.reload_hold:
        STATE.reload_hold = False
        record["held"] = True
        while not await request.is_disconnected():
            await asyncio.sleep(DISCONNECT_POLL)
        return JSONResponse({"error": {"message": "never answered"}}, status_code=500)
    if subscription["id"] in STATE.reload_fail:
        return JSONResponse({"error": {"message": "cannot load this key"}}, status_code=500)
    STATE.loaded[body["agent_id"]] = subscription["id"]
    record["ok"] = True
    return JSONResponse({"loaded": subscription["id"]})


async def _control(request: Request) -> Response:
    global STATE
    body = json.loads(await request.body())
    if body.get("reset"):
        STATE.release.set()  # let any run still held from an earlier test go
        STATE = State()
    if "refusing" in body:
        STATE.refusing = set(body["refusing"])
    if "reload_fail" in body:
        STATE.reload_fail = set(body["reload_fail"])
    if "reload_hold" in body:
        STATE.reload_hold = bool(body["reload_hold"])
    if body.get("release"):
        STATE.release.set()
    return JSONResponse({"ok": True})


async def _report(request: Request) -> Response:
    return JSONResponse({"runs": STATE.runs, "reloads": STATE.reloads, "loaded": STATE.loaded})


def build_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/agent", _agent, methods=["POST"]),
            Route("/reload", _reload, methods=["POST"]),
            Route("/control", _control, methods=["POST"]),
            Route("/report", _report, methods=["GET"]),
        ]
    )


@dataclass(frozen=True)
class ReloadAgent:
    base_url: str

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    async def control(self, **settings: Any) -> None:
        async with httpx.AsyncClient(timeout=10) as http:
            (await http.post(self.url("/control"), json=settings)).raise_for_status()

    async def report(self) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=10) as http:
            response = await http.get(self.url("/report"))
        response.raise_for_status()
        report: dict[str, Any] = response.json()
        return report


@contextmanager
def running_reload_agent(log_path: Path) -> Iterator[ReloadAgent]:
    with serving_module("tests.support.reload_agent", "/report", log_path, "reload agent") as url:
        yield ReloadAgent(url)


class LocalReloader:
    """The same agent as a `python` one (`reload_method = "reload"`), for one process: runs
    on a subscription in `refusing` are refused as rate-limited, before any text."""

    def __init__(self) -> None:
        self.loaded = INITIAL
        self.refusing: set[str] = set()
        self.cooldown: float | None = None
        """The refusals' Retry-After (None: the kind's default)."""
        self.failing: set[str] = set()
        """Subscriptions whose reload fails."""
        self.reloads: list[str] = []
        self.runs: list[tuple[str | None, str]] = []
        """(the subscription forwarded, the one loaded) per run."""

    async def stream(self, request: AgentRequest) -> AsyncIterator[str]:
        forwarded = request.subscription.id if request.subscription else None
        self.runs.append((forwarded, self.loaded))
        if self.loaded in self.refusing:
            raise SubscriptionFailureError(
                "rate_limit", forwarded, "rate limit reached", self.cooldown
            )
        yield f"on {self.loaded}"

    async def reload(self, subscription: Subscription) -> None:
        self.reloads.append(subscription.id)
        if subscription.id in self.failing:
            raise RuntimeError(f"cannot load {subscription.api_key}")
        self.loaded = subscription.id

    async def aclose(self) -> None:
        return None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    uvicorn.run(build_app(), host="127.0.0.1", port=parser.parse_args().port, log_level="warning")


if __name__ == "__main__":
    main()
