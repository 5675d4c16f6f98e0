"""Input a fuzzer found the API taking: each is now a 422 problem that changes nothing.

NaN and Infinity in JSON, a huge runs offset, event ids beyond a stream id's range,
unparseable bodies, lenient numbers, repeated credential and idempotency headers, and
oversized input echoed back; and an execute-task Idempotency-Key reused with another
execution id, across a real server.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from app.middleware import MAX_DEPTH
from app.redis import as_text
from app.redis.server import RedisServer
from app.routers.models.params import MAX_OFFSET
from tests.support.api import AppClient, app_client
from tests.support.servers import INTERNAL, INTERNAL_SECRET, Servers, client
from tests.support.waiting import BACKGROUND_KEYS

JSON = {"content-type": "application/json"}


@pytest.fixture
async def api(redis: Redis, redis_server: RedisServer) -> AsyncIterator[AppClient]:
    async with app_client(redis_server.url, internal_secret=INTERNAL_SECRET) as http:
        yield http


async def keyspace(redis: Redis) -> dict[bytes, Any]:
    """Every key with its content (what a refused request must leave as it was), but
    those running workers write in the background whatever requests do."""
    found: dict[bytes, Any] = {}
    async for key in redis.scan_iter(count=1000):
        if BACKGROUND_KEYS.match(key):
            continue
        kind = as_text(await redis.type(key))
        if kind == "string":
            found[key] = await redis.get(key)
        elif kind == "hash":
            found[key] = await redis.hgetall(key)
        elif kind == "zset":
            found[key] = await redis.zrange(key, 0, -1, withscores=True)
        elif kind == "list":
            found[key] = await redis.lrange(key, 0, -1)
        elif kind == "stream":
            found[key] = await redis.xrange(key)
        else:
            found[key] = kind
    return found


def longest_string(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        value = [*value.keys(), *value.values()]
    if isinstance(value, list):
        return max((longest_string(item) for item in value), default=0)
    return 0


def assert_problem(response: httpx.Response, status: int, slug: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status
    if slug is not None:
        assert problem["type"] == f"/problems/{slug}"


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400"])
async def test_non_finite_numbers_in_json_are_refused_and_write_nothing(
    api: AppClient, redis: Redis, number: str
) -> None:
    await api.post("/v1/sessions/s/messages?wait=5", json={"text": "first"})
    before = await keyspace(redis)
    bodies = [
        ("/v1/sessions/s/messages", '{"text": "hi", "metadata": {"x": %s}}'),
        ("/v1/sessions/s/messages", '{"text": "hi", "metadata": {"deep": [1, {"x": %s}]}}'),
        (
            "/internal/execute-task",
            '{"agent_id": "echo", "execution_id": "e1", "message": "m", "timeout_seconds": %s}',
        ),
    ]
    for path, body in bodies:
        response = await api.post(path, content=body % number, headers=JSON | INTERNAL)
        assert_problem(response, 422, "invalid-json")
    assert await keyspace(redis) == before


async def test_json_nested_too_deep_is_refused(api: AppClient, redis: Redis) -> None:
    before = await keyspace(redis)
    for depth in [MAX_DEPTH, 5000]:  # the body's object is one level more
        nested = "[" * depth + "1" + "]" * depth
        body = '{"text": "hi", "metadata": {"x": ' + nested + "}}"
        response = await api.post("/v1/sessions/s/messages", content=body, headers=JSON)
        assert_problem(response, 422, "invalid-json")
    assert await keyspace(redis) == before
    fits = "[" * (MAX_DEPTH - 3) + "1" + "]" * (MAX_DEPTH - 3)
    body = '{"text": "hi", "metadata": {"x": ' + fits + "}}"
    done = await api.post("/v1/sessions/s/messages?wait=5", content=body, headers=JSON)
    assert done.status_code == 200, done.text


async def test_unparseable_json_is_422_problem(api: AppClient, redis: Redis) -> None:
    before = await keyspace(redis)
    for body in [b'{"text": ', b"\xff\xfe{}", b"[1, 2"]:
        response = await api.post("/v1/sessions/s/messages", content=body, headers=JSON)
        assert_problem(response, 422, "invalid-json")
    assert await keyspace(redis) == before


async def test_runs_offset_is_bounded(api: AppClient) -> None:
    await api.post("/v1/sessions/s/messages?wait=5", json={"text": "hi"})
    assert (await api.get(f"/v1/sessions/s/runs?offset={MAX_OFFSET}")).json()["runs"] == []
    for offset in [MAX_OFFSET + 1, 2**63, 10**30]:
        assert_problem(await api.get(f"/v1/sessions/s/runs?offset={offset}"), 422, "validation")


@pytest.mark.parametrize(
    "query, headers",
    [
        ("?since=99999999999999999999-0", {}),
        ("?since=18446744073709551615-18446744073709551615", {}),
        ("", {"Last-Event-ID": "1-99999999999999999999"}),
        ("?since=not-an-id", {}),
    ],
)
async def test_event_ids_out_of_range_are_422_before_the_stream(
    api: AppClient, query: str, headers: dict[str, str]
) -> None:
    await api.post("/v1/sessions/s/messages?wait=5", json={"text": "hi"})
    response = await api.get(f"/v1/sessions/s/events{query}", headers=headers)
    assert_problem(response, 422)


@pytest.mark.parametrize(
    "path",
    [
        "/v1/sessions/s/messages?wait=1_0",
        "/v1/sessions/s/messages?wait=%2B5",
        "/v1/sessions/s/messages?wait=nan",
        "/v1/sessions/s/messages?wait=1e1",
    ],
)
async def test_lenient_query_numbers_are_refused(api: AppClient, redis: Redis, path: str) -> None:
    before = await keyspace(redis)
    assert_problem(await api.post(path, json={"text": "hi"}), 422, "validation")
    assert await keyspace(redis) == before


async def test_lenient_numbers_in_bodies_and_list_queries_are_refused(api: AppClient) -> None:
    await api.post("/v1/sessions/s/messages?wait=5", json={"text": "hi"})
    for query in ["limit=%2B5", "limit=1_0", "offset=%2B1", "limit= 5"]:
        assert_problem(await api.get(f"/v1/sessions/s/runs?{query}"), 422, "validation")
    task = {"agent_id": "echo", "execution_id": "e2", "message": "m", "timeout_seconds": "1_0"}
    assert_problem(await api.post("/internal/execute-task", json=task, headers=INTERNAL), 422)
    message = {"text": "hi", "priority": "+5"}
    assert_problem(await api.post("/v1/sessions/s/messages", json=message), 422, "validation")


@pytest.mark.parametrize("header", ["Authorization", "Idempotency-Key", "X-Internal-Secret"])
async def test_repeated_headers_are_refused(api: AppClient, redis: Redis, header: str) -> None:
    before = await keyspace(redis)
    value = "Bearer x" if header == "Authorization" else INTERNAL_SECRET
    headers = [(header, value), (header, value), ("content-type", "application/json")]
    for path in ["/v1/sessions/s/messages", "/internal/execute-task"]:
        response = await api.post(path, content=b'{"text": "hi"}', headers=headers)
        assert_problem(response, 422, "duplicate-header")
        assert header.lower() in response.json()["detail"]
    assert await keyspace(redis) == before


async def test_problem_documents_cut_echoed_input(api: AppClient) -> None:
    long_id = "a" * 5000
    responses = [
        await api.get(f"/v1/sessions/s/events?since={'9' * 49}"),
        await api.post("/v1/sessions/s/messages", json={"text": "hi", "agent_id": "b" * 64}),
        await api.post("/v1/sessions/s/messages", json={"text": "hi", "x" * 5000: 1}),
        await api.get(f"/internal/agents/{long_id}", headers=INTERNAL),
        await api.get(f"/v1/sessions/{long_id}"),
    ]
    for response in responses:
        assert 400 <= response.status_code < 500, response.text
        assert longest_string(response.json()) <= 200, response.text


async def test_reused_idempotency_key_with_another_execution_is_409(servers: Servers) -> None:
    key = f"k-{uuid.uuid4().hex}"
    first = {"agent_id": "echo", "execution_id": f"a-{key}", "message": "task A"}
    second = first | {"execution_id": f"b-{key}", "message": "task B"}
    headers = INTERNAL | {"Idempotency-Key": key}
    async with client(servers.four_workers, INTERNAL) as a, client(servers.other_process) as b:
        done = await a.post("/internal/execute-task?wait=10", json=first, headers=headers)
        assert done.status_code == 200, done.text
        again = await a.post("/internal/execute-task?wait=10", json=first, headers=headers)
        assert again.json()["run_id"] == done.json()["run_id"]
        refused = await b.post("/internal/execute-task?wait=10", json=second, headers=headers)
        assert_problem(refused, 409, "idempotency-conflict")
        assert first["execution_id"] in refused.json()["detail"]
        assert done.json()["run_id"] not in refused.text
        # the refused execution was not recorded: it answers 404, not the other task's run
        missing = await a.get(f"/internal/executions/{second['execution_id']}")
        assert missing.status_code == 404
        # and without the key, the second execution runs its own task
        own = await b.post("/internal/execute-task?wait=10", json=second, headers=INTERNAL)
        assert own.status_code == 200, own.text
        assert own.json()["run_id"] != done.json()["run_id"]
        assert own.json()["input"] == "task B"
