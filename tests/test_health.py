"""Liveness, readiness and problem+json errors over HTTP (in process, with the lifespan)."""

from __future__ import annotations

from app.redis.server import RedisServer
from tests.support.api import app_client


async def test_healthz_and_readyz(redis_server: RedisServer) -> None:
    async with app_client(redis_server.url) as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text


async def test_readyz_is_503_while_redis_is_down_and_recovers(
    own_redis_server: RedisServer,
) -> None:
    async with app_client(own_redis_server.url, redis_timeout_seconds=0.5) as client:
        assert (await client.get("/readyz")).status_code == 200
        own_redis_server.stop()
        down = await client.get("/readyz")
        assert down.status_code == 503
        assert down.headers["content-type"] == "application/problem+json"
        assert down.headers["retry-after"] == str(client.settings.retry_after_seconds)
        assert down.json()["status"] == 503
        assert (await client.get("/healthz")).status_code == 200  # the process still answers
        own_redis_server.start()  # same port, same data
        assert (await client.get("/readyz")).status_code == 200


async def test_unknown_route_is_problem_json(redis_server: RedisServer) -> None:
    async with app_client(redis_server.url) as client:
        response = await client.get("/nowhere")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["title"] == "Not Found"


async def test_readyz_reloads_scripts_after_a_script_flush(redis_server: RedisServer) -> None:
    import hashlib

    import redis as sync_redis

    from app.locks.scripts import ACQUIRE, RELEASE, RENEW

    direct = sync_redis.Redis.from_url(redis_server.url)
    shas = [hashlib.sha1(s.encode()).hexdigest() for s in (ACQUIRE, RENEW, RELEASE)]
    async with app_client(redis_server.url) as client:
        direct.script_flush()
        assert direct.script_exists(*shas) == [False, False, False]
        assert (await client.get("/readyz")).status_code == 200
    assert direct.script_exists(*shas) == [True, True, True]
    direct.close()
