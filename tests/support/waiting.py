"""Waiting on a condition with a deadline, the suite's only way to wait."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis

from app.keys import session_keys

POLL = 0.005


async def wait_until(
    condition: Callable[[], Awaitable[bool]], timeout: float = 5.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(POLL)


def wait_until_sync(
    condition: Callable[[], bool], timeout: float = 5.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(POLL)


BACKGROUND_KEYS = re.compile(rb"^lg:(\{sweeper\}:.*|workers|\{w:[^}]*\}:worker)$")
"""Keys running workers write whatever requests do: the sweeper's lease, the worker
registry."""


async def written_keys(redis: Redis) -> list[str]:
    """The keys requests wrote: all but those every running worker writes in the
    background (`BACKGROUND_KEYS`)."""
    return [k.decode() async for k in redis.scan_iter() if not BACKGROUND_KEYS.match(k)]


async def start_confirmed(redis: Redis, tenant: str, session_id: str, run_id: str) -> bool:
    """Whether the holder confirmed that `run_id`'s agent started (after that, a holder
    that dies leaves the run `lost`; before, the run is started again)."""
    confirmed = await redis.hget(session_keys(tenant, session_id).state, "confirmed")
    return confirmed == run_id.encode()
