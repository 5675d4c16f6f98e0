"""The Lua scripts behind capacity slots (a fenced counting semaphore), their arguments and
their replies.

Every script takes the resource's whole key list (`SlotKeys.all`, one hash slot) and starts
with the same prelude: read Redis' clock, drop the holders and waiters whose time ran out
(a dead holder's slot frees itself on expiry, with no sweeper), forget old releases. The
grant order is decided in Lua, by `choose`: the waiter of the tenant with the fewest
holders of this resource, then the highest priority, then the earliest arrival. Whoever
frees a slot (a release, a leave, an expiry a script notices) wakes the waiters that are
next in that order, each on its own channel, so nobody polls and a waiter that is not
next is not woken at all.

Every script answers a re-send as it answered the first call: an acquire carries the
waiter's token, which it keeps for the whole wait, so a grant whose reply was lost is
found again; a release remembers the tokens it released for `RELEASED_MEMORY_MS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from redis.asyncio import Redis

from app.keys import SlotKeys
from app.locks.scripts import LockScripts


class SlotCode(IntEnum):
    OK = 0
    WAIT = 1
    NOT_OWNED = 2
    EXPIRED = 3


RELEASED_MEMORY_MS = 30_000
"""How long a release is remembered, so that its re-send (within the Redis timeout and
redis-py's retries) answers OK too."""

# KEYS: SlotKeys.all = holders, info, waiters, queue, fence, seq, released.
# Defines `now` (ms, Redis clock), `now_us`, `expired` (holders dropped just now),
# `choose(free)` (the next `free` waiters' tokens in grant order) and
# `wake(tokens, prefix, except)` (PUBLISH to each token's channel but `except`'s).
PRELUDE = f"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function drop(zkey, hkey)
  local gone = redis.call('ZRANGEBYSCORE', zkey, '-inf', now)
  for _, token in ipairs(gone) do redis.call('HDEL', hkey, token) end
  if #gone > 0 then redis.call('ZREMRANGEBYSCORE', zkey, '-inf', now) end
  return #gone
end
local expired = drop(KEYS[1], KEYS[2])
drop(KEYS[3], KEYS[4])
redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', now - {RELEASED_MEMORY_MS})
local function choose(free)
  local chosen = {{}}
  if free <= 0 then return chosen end
  local flat = redis.call('HGETALL', KEYS[4])
  if #flat == 0 then return chosen end
  local counts = {{}}
  for _, raw in ipairs(redis.call('HVALS', KEYS[2])) do
    local tenant = cjson.decode(raw).tenant
    counts[tenant] = (counts[tenant] or 0) + 1
  end
  local waiters = {{}}
  for i = 1, #flat, 2 do
    local w = cjson.decode(flat[i + 1])
    w.token = flat[i]
    waiters[#waiters + 1] = w
  end
  for _ = 1, free do
    local best, best_count
    for _, w in ipairs(waiters) do
      if not w.taken then
        local c = counts[w.tenant] or 0
        if best == nil or c < best_count or (c == best_count and (w.priority > best.priority
            or (w.priority == best.priority and w.seq < best.seq))) then
          best, best_count = w, c
        end
      end
    end
    if best == nil then break end
    best.taken = true
    counts[best.tenant] = best_count + 1
    chosen[#chosen + 1] = best.token
  end
  return chosen
end
local function wake(tokens, prefix, except)
  for _, token in ipairs(tokens) do
    if token ~= except then redis.call('PUBLISH', prefix .. token, '1') end
  end
end
"""

# KEYS: SlotKeys.all
# ARGV[1] token (the same for every attempt of one wait), ARGV[2] hold ttl ms, ARGV[3] cap,
# ARGV[4] waiter ttl ms, ARGV[5] run id, ARGV[6] tenant, ARGV[7] priority 0-9,
# ARGV[8] worker, ARGV[9] start deadline in µs on Redis' clock (0: none),
# ARGV[10] wake channel prefix.
# Returns {OK, fence} when the token holds a slot (granted now, or by an earlier call of
# which this is a re-send); {WAIT, ms until the first holder's expiry, now_us} after
# (re)registering the waiter and waking whoever is next; {EXPIRED, now_us} past the
# deadline, the waiter removed.
ACQUIRE = (
    PRELUDE
    + """
local token = ARGV[1]
local cap = tonumber(ARGV[3])
local mine = redis.call('HGET', KEYS[2], token)
if mine then return {0, cjson.decode(mine).fence} end
local start_by = tonumber(ARGV[9])
if start_by > 0 and now_us >= start_by then
  redis.call('ZREM', KEYS[3], token)
  redis.call('HDEL', KEYS[4], token)
  wake(choose(cap - redis.call('ZCARD', KEYS[1])), ARGV[10], token)
  return {3, now_us}
end
if redis.call('HEXISTS', KEYS[4], token) == 0 then
  redis.call('HSET', KEYS[4], token, cjson.encode({run = ARGV[5], tenant = ARGV[6],
    priority = tonumber(ARGV[7]), seq = redis.call('INCR', KEYS[6]), worker = ARGV[8],
    since = now}))
end
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[4]), token)
local chosen = choose(cap - redis.call('ZCARD', KEYS[1]))
for _, c in ipairs(chosen) do
  if c == token then
    redis.call('ZREM', KEYS[3], token)
    redis.call('HDEL', KEYS[4], token)
    local fence = redis.call('INCR', KEYS[5])
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), token)
    redis.call('HSET', KEYS[2], token, cjson.encode({run = ARGV[5], tenant = ARGV[6],
      worker = ARGV[8], since = now, fence = fence}))
    return {0, fence}
  end
end
wake(chosen, ARGV[10], token)
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local pause = tonumber(ARGV[4])
if first[2] then pause = math.max(1, tonumber(first[2]) - now) end
return {1, pause, now_us}
"""
)

# KEYS: SlotKeys.all
# ARGV[1] token, ARGV[2] hold ttl ms, ARGV[3] cap, ARGV[4] wake channel prefix
# Returns OK after resetting the hold's expiry; NOT_OWNED when the token holds no slot
# (expired, or never granted). Holders found expired on the way free their slots, and
# the waiters next in line are woken.
RENEW = (
    PRELUDE
    + """
if expired > 0 then
  wake(choose(tonumber(ARGV[3]) - redis.call('ZCARD', KEYS[1])), ARGV[4], '')
end
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[1])
  return 0
end
return 2
"""
)

# KEYS: SlotKeys.all
# ARGV[1] token (a holder's, or a waiter's that gives up), ARGV[2] cap,
# ARGV[3] wake channel prefix
# Returns OK after freeing the slot (or leaving the queue) and waking whoever is next;
# OK again for a token released in the last RELEASED_MEMORY_MS (a re-send); NOT_OWNED
# when the token neither holds nor waits (its time ran out).
RELEASE = (
    PRELUDE
    + f"""
local token = ARGV[1]
local held = redis.call('ZREM', KEYS[1], token) == 1
local waited = redis.call('ZREM', KEYS[3], token) == 1
redis.call('HDEL', KEYS[2], token)
redis.call('HDEL', KEYS[4], token)
if held or waited or expired > 0 then
  wake(choose(tonumber(ARGV[2]) - redis.call('ZCARD', KEYS[1])), ARGV[3], token)
end
if held or waited then
  redis.call('ZADD', KEYS[7], now, token)
  redis.call('PEXPIRE', KEYS[7], {RELEASED_MEMORY_MS})
  return 0
end
if redis.call('ZSCORE', KEYS[7], token) then return 0 end
return 2
"""
)


class SlotScripts(LockScripts):
    """The slots' scripts above."""

    __slots__ = ()

    @classmethod
    def register(cls, redis: Redis) -> SlotScripts:
        return cls.of(redis, ACQUIRE, RENEW, RELEASE)


@dataclass(frozen=True, slots=True)
class Claim:
    """Who asks for a slot: shown to operators, and what the grant order weighs."""

    run_id: str
    tenant: str
    worker: str
    priority: int = 5
    start_by_us: int | None = None
    """The run's start deadline, µs on Redis' clock; past it the wait ends EXPIRED."""


@dataclass(frozen=True, slots=True)
class AcquireReply:
    code: SlotCode
    fence: int = 0
    pause_ms: int = 0
    now_us: int = 0


def acquire_args(
    keys: SlotKeys, token: str, cap: int, claim: Claim, ttl_ms: int, waiter_ttl_ms: int
) -> list[Any]:
    return [
        token,
        ttl_ms,
        cap,
        waiter_ttl_ms,
        claim.run_id,
        claim.tenant,
        max(0, min(9, claim.priority)),
        claim.worker,
        claim.start_by_us or 0,
        keys.wake,
    ]


def decode_acquire(reply: list[Any]) -> AcquireReply:
    code = SlotCode(int(reply[0]))
    if code == SlotCode.OK:
        return AcquireReply(code, fence=int(reply[1]))
    if code == SlotCode.EXPIRED:
        return AcquireReply(code, now_us=int(reply[1]))
    return AcquireReply(code, pause_ms=int(reply[1]), now_us=int(reply[2]))


def renew_args(keys: SlotKeys, token: str, cap: int, ttl_ms: int) -> list[Any]:
    return [token, ttl_ms, cap, keys.wake]


def release_args(keys: SlotKeys, token: str, cap: int) -> list[Any]:
    return [token, cap, keys.wake]
