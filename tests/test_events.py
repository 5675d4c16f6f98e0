"""Server-sent events of a session, served by a worker that runs nothing of it."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from tests.support.api import post
from tests.support.servers import ACME, Servers, client

pytestmark = pytest.mark.multiprocess


@asynccontextmanager
async def event_stream(
    url: str, session: str, headers: dict[str, str] | None = None
) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
    async with (
        client(url) as http,
        http.stream(
            "GET", f"/v1/sessions/{session}/events", headers=headers or {}, timeout=30
        ) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")

        async def parsed() -> AsyncIterator[dict[str, Any]]:
            event: dict[str, Any] = {}
            async for line in response.aiter_lines():
                if line.startswith("id:"):
                    event["id"] = line[3:].strip()
                elif line.startswith("event:"):
                    event["event"] = line[6:].strip()
                elif line.startswith("data:"):
                    event["data"] = json.loads(line[5:].strip())
                elif line == "" and "data" in event:
                    yield event
                    event = {}

        yield parsed()


async def until(
    events: AsyncIterator[dict[str, Any]], kind: str, run_id: str
) -> list[dict[str, Any]]:
    seen = []
    async with asyncio.timeout(20):
        async for event in events:
            seen.append(event)
            if event["event"] == kind and event["data"]["run_id"] == run_id:
                return seen
    raise AssertionError(f"stream ended before {kind}")


async def test_any_worker_streams_a_sessions_events_and_resumes_after_an_id(
    servers: Servers,
) -> None:
    session = f"sse-{uuid.uuid4().hex[:8]}"
    await post(servers.other_process, session, "create the session")
    async with event_stream(servers.four_workers, session) as events:
        run = (await post(servers.other_process, session, "hello there")).json()
        seen = await until(events, "completed", run["run_id"])
    mine = [e for e in seen if e["data"]["run_id"] == run["run_id"]]
    kinds = [e["event"] for e in mine]
    assert kinds[0] == "queued" and kinds[1] == "started" and kinds[-1] == "completed"
    assert "".join(e["data"]["text"] for e in mine if e["event"] == "delta") == "echo: hello there"
    ids = [tuple(map(int, e["id"].split("-"))) for e in seen]
    assert ids == sorted(ids)
    started_id = mine[1]["id"]
    async with event_stream(
        servers.other_process, session, {**ACME, "Last-Event-ID": started_id}
    ) as again:
        resumed = await until(again, "completed", run["run_id"])
    assert [e["id"] for e in resumed] == [e["id"] for e in mine[2:]]


async def test_reset_and_failures_are_streamed(servers: Servers) -> None:
    session = f"sse-{uuid.uuid4().hex[:8]}"
    await post(servers.other_process, session, "create")
    async with event_stream(servers.four_workers, session) as events:
        async with client(servers.other_process) as http:
            body = {"text": "x", "metadata": {"fail": "error"}}
            failing = (await http.post(f"/v1/sessions/{session}/messages", json=body)).json()
            seen = await until(events, "failed", failing["run_id"])
            assert "fail" in seen[-1]["data"]["error"]
            await http.post(f"/v1/sessions/{session}/reset")
        async with asyncio.timeout(10):
            async for event in events:
                if event["event"] == "reset":
                    assert event["data"]["generation"] == "2"
                    break


async def test_event_streams_are_tenant_scoped_and_ids_checked(servers: Servers) -> None:
    session = f"sse-{uuid.uuid4().hex[:8]}"
    await post(servers.other_process, session, "create")
    async with client(servers.four_workers) as http:
        bad = await http.get(f"/v1/sessions/{session}/events", headers={"Last-Event-ID": "nope"})
        assert bad.status_code == 422
        unknown = await http.get(f"/v1/sessions/{session}-other/events")
        assert unknown.status_code == 404
    async with client(servers.four_workers, {"Authorization": "Bearer key-globex-0002"}) as http:
        assert (await http.get(f"/v1/sessions/{session}/events")).status_code == 404
