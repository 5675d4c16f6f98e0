"""The reload gate's scripts, registered once per client. Every key is one agent's
(`AgentKeys`, one hash slot): its gate lease, gate state, in-flight runs, assignment and
events. Times are the Redis clock's, in milliseconds.

Every script answers a re-send as it answered the first call: ENTER finds its own entry,
LEAVE and RENEW are idempotent, CLOSE knows its own token, NOTE its sequence number and
COMMIT the fence it recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import IntEnum

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""


class GateCode(IntEnum):
    OK = 0
    REFUSED = 1
    """ENTER: the gate is closed; CLOSE, COMMIT: the lease is not the caller's."""
    CHANGED = 2
    HELD = 3


# Pass the agent's gate: while it is open, record the run in flight on the agent's current
# subscription (the one the run then uses); while it is closed, say for how long at most.
# KEYS[1] gate lease, KEYS[2] assignment hash, KEYS[3] in-flight hash
# ARGV[1] the run's entry "<run id>/<fence>", ARGV[2] the entry's TTL in ms,
#   ARGV[3..] the agent's subscriptions in priority order (the first: the initial one)
# Returns {OK, subscription} (passed, or a re-send that finds its entry) |
#   {REFUSED, gate's PTTL in ms, now in µs} (closed)
ENTER = (
    """
local held = redis.call('HGET', KEYS[3], ARGV[1])
if held then return {0, string.match(held, '^[^|]*')} end
if redis.call('EXISTS', KEYS[1]) == 1 then
  local t = redis.call('TIME')
  return {1, redis.call('PTTL', KEYS[1]), t[1] .. string.format('%06d', tonumber(t[2]))}
end
local stored = redis.call('HGET', KEYS[2], 'subscription')
local sub = ARGV[3]
for i = 3, #ARGV do
  if ARGV[i] == stored then sub = stored end
end
"""
    + _NOW
    + """
redis.call('HSET', KEYS[3], ARGV[1], sub .. '|' .. tostring(now + tonumber(ARGV[2])))
return {0, sub}
"""
)

# A run leaves the agent (it ended, or it was refused and passes the gate again); while a
# gate is closed, its holder is told at once that one run fewer is draining.
# KEYS[1] in-flight hash, KEYS[2] gate lease
# ARGV[1] the run's entry, ARGV[2] the gate's `left` channel
# Returns 1
LEAVE = """
redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('PUBLISH', ARGV[2], ARGV[1]) end
return 1
"""

# Keep this worker's runs in flight: a worker that dies stops renewing, and its runs drop
# out of the count once their TTL has passed.
# KEYS[1] in-flight hash
# ARGV[1] TTL in ms, ARGV[2..] entries
# Returns how many of them were still there
RENEW = (
    _NOW
    + """
local found = 0
for i = 2, #ARGV do
  local v = redis.call('HGET', KEYS[1], ARGV[i])
  if v then
    redis.call('HSET', KEYS[1], ARGV[i],
               string.match(v, '^[^|]*') .. '|' .. tostring(now + tonumber(ARGV[1])))
    found = found + 1
  end
end
return found
"""
)

# The runs in flight on a subscription; entries whose TTL has passed are dropped first.
# KEYS[1] in-flight hash
# ARGV[1] subscription
# Returns {entry, ms until it expires, entry, ms, ...}
INFLIGHT = (
    _NOW
    + """
local out = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local sub, expiry = string.match(all[i + 1], '^([^|]*)|(%d+)$')
  if not expiry or tonumber(expiry) <= now then
    redis.call('HDEL', KEYS[1], all[i])
  elseif sub == ARGV[1] then
    table.insert(out, all[i])
    table.insert(out, tostring(tonumber(expiry) - now))
  end
end
return out
"""
)

# Close the gate for a switch from one subscription to another, while the caller holds the
# agent's switch lease and the assignment is still the one it read: the gate's lease is
# taken (a fence of its own), its state written and its one event added, in one step.
# KEYS[1] switch lease, KEYS[2] switch fence, KEYS[3] assignment hash, KEYS[4] gate lease,
#   KEYS[5] gate fence, KEYS[6] gate state, KEYS[7] event stream
# ARGV[1] switch token, ARGV[2] switch fence, ARGV[3] the stored assignment read ('' none),
#   ARGV[4] gate token, ARGV[5] gate TTL ms, ARGV[6] from, ARGV[7] to, ARGV[8] reason,
#   ARGV[9] failure kind ('' none), ARGV[10] agent id, ARGV[11] event stream max length,
#   ARGV[12] drain timeout ms
# Returns {OK, gate fence} (closed now, or a re-send) | {REFUSED} (switch lease not held) |
#   {CHANGED} (assignment moved) | {HELD, the target of the switch already under way}
CLOSE = (
    """
if redis.call('GET', KEYS[4]) == ARGV[4] then
  return {0, tonumber(redis.call('GET', KEYS[5]))}
end
if redis.call('GET', KEYS[1]) ~= ARGV[1] or redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return {1}
end
if (redis.call('HGET', KEYS[3], 'subscription') or '') ~= ARGV[3] then return {2} end
if redis.call('EXISTS', KEYS[4]) == 1 then
  return {3, redis.call('HGET', KEYS[6], 'to') or ''}
end
"""
    + _NOW
    + """
redis.call('SET', KEYS[4], ARGV[4], 'PX', ARGV[5])
local fence = redis.call('INCR', KEYS[5])
redis.call('DEL', KEYS[6])
redis.call('HSET', KEYS[6], 'from', ARGV[6], 'to', ARGV[7], 'phase', 'draining',
           'reason', ARGV[8], 'kind', ARGV[9], 'fence', fence, 'closed_at', now,
           'drain_until', now + tonumber(ARGV[12]), 'error', '', 'seq', 0)
redis.call('XADD', KEYS[7], 'MAXLEN', '~', ARGV[11], '*', 'type', 'agent_gate_closed',
  'agent_id', ARGV[10], 'from', ARGV[6], 'to', ARGV[7], 'reason', ARGV[8], 'kind', ARGV[9],
  'fence', fence)
return {0, fence}
"""
)

# The gate's holder records what it is doing (phase, target, a reload's failure), and
# adds an event for it, once per sequence number.
# KEYS[1] gate lease, KEYS[2] gate state, KEYS[3] event stream
# ARGV[1] gate token, ARGV[2] sequence number (1, 2, ... per gate), ARGV[3] event type
#   ('' none), ARGV[4] agent id, ARGV[5] event stream max length, ARGV[6..] field, value...
# Returns 1 (written now, or a re-send) | 0 (the gate is no longer this holder's)
NOTE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if tonumber(redis.call('HGET', KEYS[2], 'seq') or '0') >= tonumber(ARGV[2]) then return 1 end
local kv = {}
for i = 6, #ARGV do table.insert(kv, ARGV[i]) end
redis.call('HSET', KEYS[2], 'seq', ARGV[2], unpack(kv))
if ARGV[3] ~= '' then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'type', ARGV[3],
             'agent_id', ARGV[4], unpack(kv))
end
return 1
"""

# Open the gate on the subscription the agent now holds: assign it (with its one
# subscription_switched event, if it is another than before) and open the gate, in one
# step, so the gate never opens on half a switch.
# KEYS[1] gate lease, KEYS[2] assignment hash, KEYS[3] gate state, KEYS[4] event stream
# ARGV[1] gate token, ARGV[2] gate fence, ARGV[3] from, ARGV[4] to, ARGV[5] reason,
#   ARGV[6] failure kind, ARGV[7] agent id, ARGV[8] event stream max length,
#   ARGV[9] the gate's `opened` channel, ARGV[10] '1' if the agent was reloaded
# Returns {OK, switch count} (opened now, or a re-send) | {REFUSED} (the gate is not ours)
COMMIT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  if redis.call('HGET', KEYS[3], 'committed') == ARGV[2] then
    return {0, tonumber(redis.call('HGET', KEYS[2], 'switch_count') or '0')}
  end
  return {1}
end
local t = redis.call('TIME')
local now_us = t[1] .. string.format('%06d', tonumber(t[2]))
local count = tonumber(redis.call('HGET', KEYS[2], 'switch_count') or '0')
if ARGV[4] ~= ARGV[3] then
  count = redis.call('HINCRBY', KEYS[2], 'switch_count', 1)
  redis.call('HSET', KEYS[2], 'subscription', ARGV[4], 'last_from', ARGV[3], 'last_to', ARGV[4],
             'last_at', now_us, 'last_reason', ARGV[5], 'last_fence', ARGV[2], 'no_viable_for', '')
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[8], '*', 'type', 'subscription_switched',
    'agent_id', ARGV[7], 'from', ARGV[3], 'to', ARGV[4], 'reason', ARGV[5], 'kind', ARGV[6],
    'switch_count', count, 'fence', ARGV[2])
end
redis.call('HSET', KEYS[3], 'phase', 'open', 'committed', ARGV[2], 'subscription', ARGV[4],
           'opened_at', string.sub(now_us, 1, -4), 'error', '')
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[9], 'open')
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[8], '*', 'type', 'agent_gate_opened',
  'agent_id', ARGV[7], 'subscription', ARGV[4], 'reloaded', ARGV[10], 'fence', ARGV[2])
return {0, count}
"""


@dataclass(frozen=True, slots=True)
class GateScripts:
    enter: AsyncScript
    leave: AsyncScript
    renew: AsyncScript
    inflight: AsyncScript
    close: AsyncScript
    note: AsyncScript
    commit: AsyncScript

    @classmethod
    def register(cls, redis: Redis) -> GateScripts:
        return cls(
            enter=redis.register_script(ENTER),
            leave=redis.register_script(LEAVE),
            renew=redis.register_script(RENEW),
            inflight=redis.register_script(INFLIGHT),
            close=redis.register_script(CLOSE),
            note=redis.register_script(NOTE),
            commit=redis.register_script(COMMIT),
        )

    def all(self) -> list[AsyncScript]:
        return [getattr(self, f.name) for f in fields(self)]
