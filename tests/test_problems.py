"""Errors as RFC 9457 problem documents: `status` is always the HTTP status code."""

from __future__ import annotations

from redis.asyncio import Redis

from app.problems import EXPOSED_ATTRIBUTES, STANDARD_MEMBERS
from app.redis.server import RedisServer
from tests.support.api import app_client, post


def test_no_error_context_is_exposed_under_a_standard_member_name() -> None:
    assert not STANDARD_MEMBERS & set(EXPOSED_ATTRIBUTES)


async def test_cancelling_a_completed_run_is_409_with_the_run_status_apart(
    redis: Redis, redis_server: RedisServer
) -> None:
    async with app_client(redis_server.url) as api:
        done = await post(api, "s", "hi", wait=5)
        assert done.json()["status"] == "completed"
        response = await api.post(f"/v1/runs/{done.json()['run_id']}/cancel")
    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 409
    assert problem["run_status"] == "completed"
    assert problem["type"] == "/problems/run-terminal"
    assert problem["run_id"] == done.json()["run_id"]
