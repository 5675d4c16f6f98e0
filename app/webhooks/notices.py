"""Subscription-switch notices: each agent's outbox of switch webhooks, in its hash slot.

A switch is owed its notice by the script that makes it: the `subscription_switched` entry
it adds to the agent's event stream in the same step (ASSIGN, and a reload gate's COMMIT).
CLAIM moves the entries after the agent's cursor into its outbox and moves the cursor in
one step (so each is owed exactly once), then claims what is due, as the session outbox
does: the attempt count is bumped and the due time pushed past the claim's end, so a
worker that dies while sending leaves the notice to another once the claim ends; SETTLE
records an attempt's outcome only if no later claim took the notice. A notice given up on
stays in the outbox as `dead` (`dead()` lists them, for GET /internal/webhooks) until
REDELIVER owes it again from its first attempt.

START, once per process at start-up, sets a missing cursor to the stream's last entry: a
deployment that had no outbox before does not send its history.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from app.keys import AgentKeys, agent_keys
from app.redis import as_text, guarded

MOVE_BATCH = 100

# KEYS[1] the agent's event stream, KEYS[2] its notices cursor
# Returns 1 when the cursor was set now, 0 when it was there.
START = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
redis.call('SET', KEYS[2], last and last[1] or '0-0')
return 1
"""

# KEYS[1] the agent's event stream, KEYS[2] its notices cursor, KEYS[3] its notices hash,
#   KEYS[4] their due times
# ARGV[1] now (ms), ARGV[2] how long a claim lasts (ms), ARGV[3] how many to claim at most
# Returns, for each claimed notice, its id, its attempt number, its payload (JSON).
CLAIM = f"""
local now = tonumber(ARGV[1])
local cursor = redis.call('GET', KEYS[2]) or '0-0'
local entries = redis.call('XRANGE', KEYS[1], '(' .. cursor, '+', 'COUNT', {MOVE_BATCH})
for _, entry in ipairs(entries) do
  local f = {{}}
  for i = 1, #entry[2], 2 do f[entry[2][i]] = entry[2][i + 1] end
  if f.type == 'subscription_switched' then
    local payload = {{type = f.type, agent_id = f.agent_id, from = f['from'], to = f.to,
                     reason = f.reason, kind = f.kind}}
    redis.call('HSET', KEYS[3], entry[1], cjson.encode({{status = 'pending', attempts = '0',
      payload = cjson.encode(payload)}}))
    redis.call('ZADD', KEYS[4], now, entry[1])
  end
  cursor = entry[1]
end
if #entries > 0 then redis.call('SET', KEYS[2], cursor) end
local out = {{}}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0,
                               tonumber(ARGV[3]))) do
  local raw = redis.call('HGET', KEYS[3], id)
  if raw then
    local notice = cjson.decode(raw)
    notice.attempts = tostring(tonumber(notice.attempts) + 1)
    redis.call('HSET', KEYS[3], id, cjson.encode(notice))
    redis.call('ZADD', KEYS[4], now + tonumber(ARGV[2]), id)
    table.insert(out, id)
    table.insert(out, notice.attempts)
    table.insert(out, notice.payload)
  else
    redis.call('ZREM', KEYS[4], id)
  end
end
return out
"""

# KEYS[1] the agent's notices hash, KEYS[2] their due times
# ARGV[1] notice id, ARGV[2] 'delivered', 'retry' or 'dead', ARGV[3] when to retry (ms),
#   ARGV[4] what went wrong, ARGV[5] the attempt number the sender's claim gave it
# Returns 1 when recorded, 0 when a later claim took the notice or it was settled already.
SETTLE = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local notice = cjson.decode(raw)
if notice.attempts ~= ARGV[5] then return 0 end
if ARGV[2] == 'delivered' then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 1
end
notice.last_error = ARGV[4]
if ARGV[2] == 'dead' then
  notice.status = 'dead'
  redis.call('ZREM', KEYS[2], ARGV[1])
else
  redis.call('ZADD', KEYS[2], tonumber(ARGV[3]), ARGV[1])
end
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(notice))
return 1
"""

# KEYS[1] the agent's notices hash, KEYS[2] their due times
# ARGV[1] notice id, ARGV[2] now (ms)
# Returns 1 when the notice is owed again, from its first attempt and due now; 0 when the
# agent has no such notice (delivered, or never). A re-send does what the first call did.
REDELIVER = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local notice = cjson.decode(raw)
notice.status, notice.attempts, notice.last_error = 'pending', '0', nil
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(notice))
redis.call('ZADD', KEYS[2], tonumber(ARGV[2]), ARGV[1])
return 1
"""


@dataclass(frozen=True, slots=True)
class Notice:
    agent_id: str
    event_id: str
    attempts: int
    """This attempt's number (1 for the first)."""
    payload: dict[str, Any]

    @property
    def webhook_id(self) -> str:
        """Stable across retries: the switch's event id, with its agent."""
        return f"{self.agent_id}/{self.event_id}"


class Notices:
    """The switch notices of the agents that have subscriptions (the agents that switch)."""

    def __init__(self, redis: Redis, agent_ids: list[str]) -> None:
        self._redis = redis
        self.agent_ids = agent_ids
        self._start: AsyncScript = redis.register_script(START)
        self._claim: AsyncScript = redis.register_script(CLAIM)
        self._settle: AsyncScript = redis.register_script(SETTLE)
        self._redeliver: AsyncScript = redis.register_script(REDELIVER)

    @property
    def scripts(self) -> list[AsyncScript]:
        return [self._start, self._claim, self._settle, self._redeliver]

    async def start(self) -> None:
        for agent_id in self.agent_ids:
            keys = agent_keys(agent_id)
            await guarded(self._start(keys=[keys.events, keys.notices_cursor]))

    async def claim(self, agent_id: str, now_ms: int, claim_ms: int, limit: int) -> list[Notice]:
        keys = agent_keys(agent_id)
        reply = await guarded(
            self._claim(
                keys=[keys.events, keys.notices_cursor, keys.notices, keys.notices_due],
                args=[now_ms, claim_ms, limit],
            )
        )
        return [
            Notice(
                agent_id, as_text(reply[i]), int(reply[i + 1]), json.loads(as_text(reply[i + 2]))
            )
            for i in range(0, len(reply), 3)
        ]

    async def settle(
        self, notice: Notice, outcome: str, *, retry_at_ms: int = 0, error: str = ""
    ) -> bool:
        keys: AgentKeys = agent_keys(notice.agent_id)
        done = await guarded(
            self._settle(
                keys=[keys.notices, keys.notices_due],
                args=[notice.event_id, outcome, retry_at_ms, error, notice.attempts],
            )
        )
        return bool(done)

    async def dead(self, limit: int) -> list[dict[str, Any]]:
        """The notices given up on, newest first (at most `limit`): each agent's outbox
        read in one pipeline."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for agent_id in self.agent_ids:
                pipe.hgetall(agent_keys(agent_id).notices)
            outboxes = await guarded(pipe.execute())
        found = []
        for agent_id, outbox in zip(self.agent_ids, outboxes, strict=True):
            for raw_id, raw in outbox.items():
                notice = json.loads(raw)
                if notice.get("status") != "dead":
                    continue
                event_id = as_text(raw_id)
                found.append(
                    {
                        "agent_id": agent_id,
                        "notice_id": event_id,
                        "webhook_id": f"{agent_id}/{event_id}",
                        "attempts": int(notice["attempts"]),
                        "last_error": notice.get("last_error"),
                        "event": json.loads(notice["payload"]),
                    }
                )
        found.sort(key=lambda n: _stream_order(n["notice_id"]), reverse=True)
        return found[:limit]

    async def redeliver(self, agent_id: str, notice_id: str, now_ms: int) -> bool:
        """Owe the notice again from its first attempt; False when there is none."""
        if agent_id not in self.agent_ids:
            return False
        keys = agent_keys(agent_id)
        done = await guarded(
            self._redeliver(keys=[keys.notices, keys.notices_due], args=[notice_id, now_ms])
        )
        return bool(done)


def _stream_order(event_id: str) -> tuple[int, int]:
    ms, _, seq = event_id.partition("-")
    return (int(ms), int(seq or 0)) if ms.isdigit() and (seq or "0").isdigit() else (0, 0)
