"""The app as tests talk to it: one in-process client factory, and the requests they make.

    async with app_client(redis_url, lease_ttl_seconds=2.0) as api:
        run = (await post(api, "s", "hello", wait=5, expect=200)).json()
        api.resources.sweeper   # what the app built in its lifespan

Every request helper takes either such a client or the URL of a real server process; a
URL gets a fresh connection per call (as tenant acme), so the kernel spreads the calls
over the server's workers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI

from app.agents import AgentRegistry
from app.main import create_app
from app.metrics import Metrics
from app.resources import Resources
from app.settings import Settings
from tests.support.servers import client
from tests.support.settings import make_settings
from tests.support.waiting import wait_until

Target = httpx.AsyncClient | str
"""An in-process client, or the base URL of a server process."""


class AppClient(httpx.AsyncClient):
    """An in-process client of one app, with the app's settings and resources at hand."""

    def __init__(
        self, app: FastAPI, settings: Settings, headers: Mapping[str, str] | None = None
    ) -> None:
        transport = httpx.ASGITransport(app=app)
        super().__init__(transport=transport, base_url="http://leasegate", headers=headers)
        self.app = app
        self.settings = settings

    @property
    def resources(self) -> Resources:
        """What the app built in its lifespan (available while the client is open)."""
        resources: Resources = self.app.state.resources
        return resources


@asynccontextmanager
async def app_client(
    url: str,
    *,
    metrics: Metrics | None = None,
    agents: AgentRegistry | None = None,
    headers: Mapping[str, str] | None = None,
    **settings: Any,
) -> AsyncIterator[AppClient]:
    """An app on the Redis at `url` with these settings, its lifespan run around a client."""
    built = make_settings(url, **settings)
    app = create_app(built, metrics=metrics, agents=agents)
    async with app.router.lifespan_context(app), AppClient(app, built, headers) as http:
        yield http


@asynccontextmanager
async def _connected(to: Target) -> AsyncIterator[httpx.AsyncClient]:
    if isinstance(to, str):
        async with client(to) as http:
            yield http
    else:
        yield to


async def post(
    to: Target,
    session: str,
    text: str,
    *,
    wait: float | None = None,
    expect: int | None = None,
    **body: Any,
) -> httpx.Response:
    """Post a message (`body` holds the other fields: metadata, busy_policy, agent_id...);
    `wait` asks for the finished run, `expect` asserts the status code."""
    params = {"wait": wait} if wait is not None else {}
    async with _connected(to) as http:
        response = await http.post(
            f"/v1/sessions/{session}/messages", json={"text": text, **body}, params=params
        )
    if expect is not None:
        assert response.status_code == expect, response.text
    return response


async def run_of(to: Target, run_id: str) -> dict[str, Any]:
    async with _connected(to) as http:
        response = await http.get(f"/v1/runs/{run_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def status_is(to: Target, run_id: str, *statuses: str) -> bool:
    return (await run_of(to, run_id))["status"] in statuses


async def wait_status(to: Target, run_id: str, *statuses: str) -> dict[str, Any]:
    async def reached() -> bool:
        return await status_is(to, run_id, *statuses)

    await wait_until(reached, 10, f"run {run_id} to reach {statuses}")
    return await run_of(to, run_id)


async def session_state(to: Target, session: str) -> dict[str, Any]:
    async with _connected(to) as http:
        state: dict[str, Any] = (await http.get(f"/v1/sessions/{session}")).json()
    return state


async def all_runs(to: Target, session: str) -> list[dict[str, Any]]:
    async with _connected(to) as http:
        runs: list[dict[str, Any]] = []
        offset: int | None = 0
        while offset is not None:
            page = (
                await http.get(
                    f"/v1/sessions/{session}/runs", params={"limit": 100, "offset": offset}
                )
            ).json()
            runs.extend(page["runs"])
            offset = page["next_offset"]
    return runs


async def wait_all_terminal(
    to: Target, session: str, count: int, timeout: float = 60
) -> list[dict[str, Any]]:
    async def done() -> bool:
        runs = await all_runs(to, session)
        return len(runs) == count and all(r["status"] not in ("queued", "running") for r in runs)

    await wait_until(done, timeout, f"{count} runs of {session} to end")
    return await all_runs(to, session)


async def events(http: httpx.AsyncClient, agent: str) -> list[dict[str, Any]]:
    """The agent's subscription events, newest first (the client sends the internal secret)."""
    found: list[dict[str, Any]] = (
        await http.get("/internal/events", params={"agent_id": agent})
    ).json()["events"]
    return found
