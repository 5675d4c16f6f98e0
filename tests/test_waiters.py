"""A thousand waiting requests on one worker share its Redis connections."""

from __future__ import annotations

import asyncio
import collections
import os
import socket

from redis.asyncio import Redis

from app.redis.server import RedisServer
from tests.support.api import app_client, post


async def test_a_thousand_waiters_do_not_open_a_thousand_connections(
    redis: Redis, redis_server: RedisServer
) -> None:
    own_name = f"leasegate:{socket.gethostname()}:{os.getpid()}"  # this worker's connections
    peak = 0
    async with app_client(redis_server.url, log_level="WARNING") as api:

        async def wait_for_run(i: int) -> int:
            # As a client is told to: a 503 (Redis did not answer in time, which a loaded
            # machine can make of a thousand requests at once) is sent again with the same
            # Idempotency-Key, which finds the run if it was admitted.
            for _ in range(3):
                response = await post(
                    api, f"w{i}", "x", metadata={"delay_ms": 1500}, wait=30, idempotency_key=f"k{i}"
                )
                if response.status_code != 503:
                    break
                retried.append(i)
            return response.status_code

        retried: list[int] = []

        waiters = [asyncio.create_task(wait_for_run(i)) for i in range(1000)]
        while not all(w.done() for w in waiters):
            clients = await redis.client_list()
            peak = max(peak, sum(c["name"] == own_name for c in clients))
            await asyncio.wait(waiters, timeout=0.05)
        statuses = [w.result() for w in waiters]
    print(f"peak Redis connections with 1,000 waiters: {peak}; 503s sent again: {len(retried)}")
    assert statuses == [200] * 1000, collections.Counter(statuses)
    assert 0 < peak <= api.settings.redis_max_connections + 1  # the pool, and the pub/sub one
