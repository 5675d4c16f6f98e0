"""Watching what the service publishes, from the test's own Redis connection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import Redis


@asynccontextmanager
async def counting(redis: Redis, channel: str) -> AsyncIterator[list[str]]:
    """Every message published on `channel` while inside."""
    received: list[str] = []
    pubsub = redis.pubsub()
    await pubsub.subscribe(channel)
    await pubsub.get_message(timeout=1)  # the subscribe confirmation

    async def read() -> None:
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.05)
            if message is not None:
                received.append(message["data"].decode())

    reader = asyncio.create_task(read())
    try:
        yield received
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await pubsub.aclose()
