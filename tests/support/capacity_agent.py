"""A `python` agent that records its own concurrency in Redis, for capacity tests across
server processes: `entrypoint = "tests.support.capacity_agent:ConcurrencyAgent"`.

Each run, from its first step to its last, counts as in flight for its agent id and, when
it has one, its subscription: the highest count ever seen is kept beside the current one,
in one script, so the maximum is exact whatever the interleaving across processes. Each
start is appended to a list (`metadata.label`, else the run id) with its Redis time, and
the fence (which numbers grants in the order they were made) and grant time of its agent
slot.
`metadata.delay_ms` makes the run last that long.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator

from redis.asyncio import Redis

from app.agents.base import AgentRequest
from app.keys import slot_keys
from app.redis import create_redis
from app.settings import Settings

# KEYS[1] in flight now, KEYS[2] most ever in flight, KEYS[3] starts list
# ARGV[1] what started (label), ARGV[2] the fence and grant time (ms) of its agent slot
# Returns the count in flight now.
ENTER = """
local now = redis.call('INCR', KEYS[1])
if now > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], now) end
if ARGV[1] ~= '' then
  local t = redis.call('TIME')
  local at = t[1] .. string.format('%06d', tonumber(t[2]))
  redis.call('RPUSH', KEYS[3], ARGV[1] .. ' ' .. at .. ' ' .. ARGV[2] .. ' ' .. ARGV[3])
end
return now
"""


def keys_of(group: str) -> tuple[str, str, str]:
    """In flight now, most ever, starts: of an agent id or a subscription id."""
    tag = f"test:{{conc:{group}}}"
    return f"{tag}:now", f"{tag}:max", f"{tag}:starts"


class ConcurrencyAgent:
    def __init__(self) -> None:
        self._redis: Redis | None = None

    def _client(self) -> Redis:
        if self._redis is None:
            self._redis = create_redis(Settings(redis_url=os.environ["LEASEGATE_REDIS_URL"]))
        return self._redis

    async def stream(self, request: AgentRequest) -> AsyncIterator[str]:
        redis = self._client()
        label = str(request.metadata.get("label") or (request.run.run_id if request.run else ""))
        groups = [request.agent_id]
        if request.subscription is not None:
            groups.append(f"sub:{request.subscription.id}")
        entered: list[str] = []
        fence, granted = await self._slot_hold(redis, request)
        try:
            for n, group in enumerate(groups):
                await redis.eval(ENTER, 3, *keys_of(group), label if n == 0 else "", fence, granted)
                entered.append(group)
            delay = float(request.metadata.get("delay_ms") or 0) / 1000
            if delay:
                await asyncio.sleep(delay)
            yield f"done: {request.text}"
        finally:
            for group in entered:
                await asyncio.shield(redis.decr(keys_of(group)[0]))

    @staticmethod
    async def _slot_hold(redis: Redis, request: AgentRequest) -> tuple[int, int]:
        """The fence (grants are numbered in grant order) and grant time (ms, Redis clock)
        of the agent slot this run holds; (0, 0) for an agent without a cap."""
        holds = await redis.hvals(slot_keys(f"a:{request.agent_id}").info)
        for raw in holds:
            hold = json.loads(raw)
            if request.run is not None and hold["run"] == request.run.run_id:
                return int(hold["fence"]), int(hold["since"])
        return 0, 0

    async def aclose(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
