"""The scheduler's /internal/execute-task: one run per execution id, deadlines, long runs."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from app.redis.server import RedisServer
from tests.support.api import app_client
from tests.support.servers import INTERNAL, INTERNAL_SECRET, Servers, client
from tests.support.waiting import written_keys


@pytest.fixture
async def api(redis: Redis, redis_server: RedisServer) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(
        redis_server.url, headers=INTERNAL, internal_secret=INTERNAL_SECRET, lease_ttl_seconds=2.0
    ) as http:
        yield http


def task(execution_id: str, **extra: Any) -> dict[str, Any]:
    return {"agent_id": "echo", "execution_id": execution_id, "message": "do it", **extra}


async def execute(
    http: httpx.AsyncClient, body: dict[str, Any], wait: float | None = None, key: str | None = None
) -> httpx.Response:
    params = {"wait": wait} if wait else {}
    headers = {"Idempotency-Key": key} if key else {}
    return await http.post("/internal/execute-task", json=body, params=params, headers=headers)


async def test_replay_after_completion_returns_the_same_run(api: httpx.AsyncClient) -> None:
    first = await execute(api, task("e-1"), wait=5)
    assert first.status_code == 200
    run = first.json()
    assert run["status"] == "completed" and run["execution_id"] == "e-1"
    assert "idempotent_replay" not in run
    again = await execute(api, task("e-1"), wait=5)
    assert again.status_code == 200
    assert again.json()["run_id"] == run["run_id"] and again.json()["idempotent_replay"] is True
    lookup = (await api.get("/internal/executions/e-1")).json()
    assert lookup["run_id"] == run["run_id"] and lookup["execution_id"] == "e-1"
    assert lookup["session_id"] == "task:echo"
    runs = (await api.get("/v1/sessions/task:echo/runs")).json()["runs"]
    assert len(runs) == 1


async def test_a_different_body_under_a_used_execution_id_is_409(api: httpx.AsyncClient) -> None:
    assert (await execute(api, task("e-2"))).status_code == 202
    conflict = await execute(api, task("e-2", message="something else"))
    assert conflict.status_code == 409
    assert conflict.headers["content-type"] == "application/problem+json"


async def test_the_idempotency_key_header_names_the_run(api: httpx.AsyncClient) -> None:
    first = await execute(api, task("e-3"), key="sched:e-3")
    again = await execute(api, task("e-3"), key="sched:e-3")
    assert first.json()["run_id"] == again.json()["run_id"]


async def test_a_busy_session_rejects_by_default(api: httpx.AsyncClient) -> None:
    assert (await execute(api, task("long", metadata={"delay_ms": 60_000}))).status_code == 202
    busy = await execute(api, task("second"))
    assert busy.status_code == 409 and int(busy.headers["retry-after"]) >= 1
    queued = await execute(api, task("third", busy_policy="enqueue"))
    assert queued.status_code == 202 and queued.json()["status"] == "queued"


async def test_a_run_past_its_deadline_is_timed_out_and_the_session_goes_on(
    api: httpx.AsyncClient,
) -> None:
    slow = await execute(
        api, task("slow", timeout_seconds=1, metadata={"delay_ms": 60_000}), wait=10
    )
    assert slow.status_code == 200
    assert slow.json()["status"] == "timed_out" and slow.json()["timeout_seconds"] == 1
    after = await execute(api, task("after"), wait=5)
    assert after.status_code == 200 and after.json()["status"] == "completed"


@pytest.mark.parametrize(
    "body",
    [
        {"execution_id": "x", "message": "m"},
        task("bad id with spaces"),
        task("e", timeout_seconds=0),
        task("e", timeout_seconds=7201),
        task("e", agent_id="nobody"),
        task("e", session_id="has space"),
        task("e", busy_policy="sometimes"),
        task("e", message=""),
    ],
)
async def test_bad_tasks_are_422_and_change_nothing(
    api: httpx.AsyncClient, redis: Redis, body: dict[str, Any]
) -> None:
    response = await execute(api, body)
    assert response.status_code == 422, response.text
    assert await written_keys(redis) == []


async def test_unknown_execution_is_404(api: httpx.AsyncClient) -> None:
    assert (await api.get("/internal/executions/never")).status_code == 404


async def test_a_run_outlives_its_lease_ttl_ten_times(
    redis: Redis, redis_server: RedisServer
) -> None:
    ttl = 0.3
    async with app_client(
        redis_server.url, headers=INTERNAL, internal_secret=INTERNAL_SECRET, lease_ttl_seconds=ttl
    ) as http:
        long = await execute(
            http, task("long", metadata={"delay_ms": int(ttl * 10 * 1000)}), wait=30
        )
        assert long.status_code == 200 and long.json()["status"] == "completed"
        follow = await execute(http, task("follow"), wait=5)
    assert follow.json()["fence"] == long.json()["fence"] + 1  # never lost, never re-granted


@pytest.mark.multiprocess
async def test_twenty_concurrent_identical_calls_over_workers_make_one_run(
    servers: Servers,
) -> None:
    execution = f"burst-{uuid.uuid4().hex[:8]}"
    body = task(execution, session_id=f"sched-{execution}", metadata={"delay_ms": 100})

    async def call(url: str) -> httpx.Response:
        async with client(url, INTERNAL) as http:
            return await execute(http, body, key=f"sched:{execution}")

    urls = [servers.four_workers if i % 4 else servers.other_process for i in range(20)]
    responses = await asyncio.gather(*(call(url) for url in urls))
    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["run_id"] for r in responses}) == 1
    assert sum("idempotent_replay" not in r.json() for r in responses) == 1
    async with client(servers.four_workers, INTERNAL) as http:
        done = await execute(http, body, wait=10, key=f"sched:{execution}")
        assert done.json()["status"] == "completed" and done.json()["idempotent_replay"]
        runs = (await http.get(f"/internal/executions/{execution}")).json()
        assert runs["run_id"] == responses[0].json()["run_id"]
    async with client(servers.four_workers) as http:
        # The scheduler's sessions belong to the internal tenant, not to a frontend's.
        assert (await http.get(f"/v1/sessions/sched-{execution}")).status_code == 404
