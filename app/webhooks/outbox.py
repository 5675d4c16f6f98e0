"""The session's outbox of completion webhooks, in the session's hash slot.

A delivery is owed by the script that gives its run a terminal status (`owe_webhook` in
app/sessions/lua.py). Sending one takes a claim: CLAIM bumps its attempt count and pushes
its due time past the claim's end, so a worker that dies while sending leaves it to be
claimed again then (at least once); SETTLE records the attempt's outcome only if no later
claim took the delivery meanwhile (the attempt count fences it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from app.keys import WEBHOOKS_DEAD
from app.redis import as_text, guarded
from app.sessions.lua import Code, Limits, Script, decode_run_pair
from app.sessions.models import Run
from app.sessions.ref import SessionRef

# KEYS: SessionKeys.all
# ARGV[1] now (ms), ARGV[2] how long a claim lasts (ms), ARGV[3] how many to claim at most
# Returns {OK, 1 if the session still owes or may come to owe deliveries else 0,
#   then for each claimed delivery: its JSON, the run's two fields}
CLAIM = """
local function main()
  local now = tonumber(ARGV[1])
  local out = {}
  local due = redis.call('ZRANGEBYSCORE', K_OUTBOX_DUE, '-inf', now, 'LIMIT', 0,
                         tonumber(ARGV[3]))
  for _, id in ipairs(due) do
    local raw = redis.call('HGET', K_OUTBOX, id)
    local run = load_run(id)
    if raw and run then
      local delivery = cjson.decode(raw)
      delivery.attempts = tostring(tonumber(delivery.attempts) + 1)
      redis.call('HSET', K_OUTBOX, id, cjson.encode(delivery))
      redis.call('ZADD', K_OUTBOX_DUE, now + tonumber(ARGV[2]), id)
      append(out, append({cjson.encode(delivery)}, flat(id, run)))
    else
      redis.call('ZREM', K_OUTBOX_DUE, id)
    end
  end
  local busy = redis.call('ZCARD', K_OUTBOX_DUE) > 0 or redis.call('LLEN', K_QUEUE) > 0
    or (redis.call('HGET', K_STATE, 'active_run') or '') ~= ''
  return append({OK, busy and 1 or 0}, out)
end
"""

# KEYS: SessionKeys.all
# ARGV[1] run id, ARGV[2] 'delivered', 'retry' or 'dead', ARGV[3] when to retry (ms),
#   ARGV[4] what went wrong, ARGV[5] the attempt count the sender's claim gave it
# Returns {OK} | {STALE} when a later claim took the delivery | {NOT_FOUND} (settled already)
SETTLE = """
local function main()
  local raw = redis.call('HGET', K_OUTBOX, ARGV[1])
  if not raw then return {NOT_FOUND} end
  local delivery = cjson.decode(raw)
  if delivery.attempts ~= ARGV[5] then return {STALE} end
  if ARGV[2] == 'delivered' then
    redis.call('HDEL', K_OUTBOX, ARGV[1])
    redis.call('ZREM', K_OUTBOX_DUE, ARGV[1])
    return {OK}
  end
  delivery.last_error = ARGV[4]
  if ARGV[2] == 'dead' then
    delivery.status = 'dead'
    redis.call('ZREM', K_OUTBOX_DUE, ARGV[1])
  else
    redis.call('ZADD', K_OUTBOX_DUE, tonumber(ARGV[3]), ARGV[1])
  end
  redis.call('HSET', K_OUTBOX, ARGV[1], cjson.encode(delivery))
  return {OK}
end
"""

# KEYS: SessionKeys.all
# ARGV[1] run id, ARGV[2] now (ms)
# Returns {OK} | {NOT_FOUND}
REDELIVER = """
local function main()
  local raw = redis.call('HGET', K_OUTBOX, ARGV[1])
  if not raw then return {NOT_FOUND} end
  local delivery = cjson.decode(raw)
  delivery.status, delivery.attempts = 'pending', '0'
  redis.call('HSET', K_OUTBOX, ARGV[1], cjson.encode(delivery))
  redis.call('ZADD', K_OUTBOX_DUE, tonumber(ARGV[2]), ARGV[1])
  return {OK}
end
"""


@dataclass(frozen=True, slots=True)
class Delivery:
    run: Run
    url: str
    attempts: int
    """This attempt's number (1 for the first)."""


@dataclass(frozen=True, slots=True)
class Claimed:
    deliveries: list[Delivery]
    busy: bool
    """The session owes deliveries still, or has runs that may come to owe one."""


class Outbox:
    def __init__(self, redis: Redis, limits: Limits) -> None:
        self._redis = redis
        self._claim = Script(redis, CLAIM, limits, name="webhook-claim")
        self._settle = Script(redis, SETTLE, limits, name="webhook-settle")
        self._redeliver = Script(redis, REDELIVER, limits, name="webhook-redeliver")

    @property
    def scripts(self) -> list[Script]:
        return [self._claim, self._settle, self._redeliver]

    async def claim(self, session: SessionRef, now_ms: int, claim_ms: int, limit: int) -> Claimed:
        reply = await self._claim(session.keys.all, [now_ms, claim_ms, limit])
        deliveries = []
        for i in range(2, len(reply), 3):
            delivery: dict[str, Any] = json.loads(as_text(reply[i]))
            run = Run.from_record(decode_run_pair(reply[i + 1], reply[i + 2]))
            deliveries.append(Delivery(run, str(delivery["url"]), int(delivery["attempts"])))
        return Claimed(deliveries, bool(int(reply[1])))

    async def settle(
        self,
        session: SessionRef,
        delivery: Delivery,
        outcome: str,
        *,
        retry_at_ms: int = 0,
        error: str = "",
    ) -> bool:
        """Record an attempt; False when a later claim had taken the delivery."""
        reply = await self._settle(
            session.keys.all,
            [delivery.run.run_id, outcome, retry_at_ms, error, delivery.attempts],
        )
        return Code(reply[0]) != Code.STALE

    async def redeliver(self, session: SessionRef, run_id: str, now_ms: int) -> bool:
        reply = await self._redeliver(session.keys.all, [run_id, now_ms])
        return Code(reply[0]) == Code.OK

    async def get(self, session: SessionRef, run_id: str) -> dict[str, Any] | None:
        raw = await guarded(self._redis.hget(session.keys.outbox, run_id))
        return None if raw is None else dict(json.loads(as_text(raw)))

    async def dead(self, limit: int) -> list[str]:
        """Run ids of the completion webhooks given up on, newest first."""
        found = await guarded(self._redis.zrevrange(WEBHOOKS_DEAD, 0, limit - 1))
        return [as_text(run_id) for run_id in found]

    async def mark_dead(self, run_id: str, when_ms: int) -> None:
        await guarded(self._redis.zadd(WEBHOOKS_DEAD, {run_id: when_ms}))

    async def forget_dead(self, run_id: str) -> None:
        await guarded(self._redis.zrem(WEBHOOKS_DEAD, run_id))
