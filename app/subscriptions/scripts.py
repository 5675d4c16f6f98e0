"""The subscription scripts, registered once per client: the assignment (a compare-and-set
fenced by the agent's switch lease) here; refusals and enabling in `cooldowns`."""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import IntEnum

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from app.subscriptions.cooldowns import ENABLE, REFUSE, STANDINGS


class AssignCode(IntEnum):
    ASSIGNED = 0
    STALE_FENCE = 1
    CHANGED = 2


# Assign a subscription, only while the caller holds the agent's switch lease with a
# current fence and the assignment is still the one it read. The event entry is written in
# the same step, so there is exactly one notification per assignment.
# KEYS[1] switch lease, KEYS[2] fence counter, KEYS[3] assignment hash, KEYS[4] event stream
# ARGV[1] token, ARGV[2] fence, ARGV[3] expected subscription ('' for the initial one),
#   ARGV[4] new subscription, ARGV[5] reason, ARGV[6] failure kind ('' for none),
#   ARGV[7] agent id, ARGV[8] event stream max length,
#   ARGV[9] the subscription switched from (the expected one, or the initial one's id)
# Returns {ASSIGNED, switch count, event id} | {STALE_FENCE} | {CHANGED, current}
ASSIGN = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] or redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return {1}
end
local current = redis.call('HGET', KEYS[3], 'subscription') or ''
if current ~= ARGV[3] then return {2, current} end
local t = redis.call('TIME')
local now = t[1] .. string.format('%06d', tonumber(t[2]))
local count = redis.call('HINCRBY', KEYS[3], 'switch_count', 1)
redis.call('HSET', KEYS[3], 'subscription', ARGV[4], 'last_from', ARGV[9], 'last_to', ARGV[4],
           'last_at', now, 'last_reason', ARGV[5], 'last_fence', ARGV[2], 'no_viable_for', '')
local event = redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[8], '*',
  'type', 'subscription_switched', 'agent_id', ARGV[7], 'from', ARGV[9], 'to', ARGV[4],
  'reason', ARGV[5], 'kind', ARGV[6], 'switch_count', count, 'fence', ARGV[2])
return {0, count, event}
"""

# Record "no viable subscription" once per burst: once per assignment, while the caller
# holds the switch lease.
# KEYS[1] switch lease, KEYS[2] fence counter, KEYS[3] assignment hash, KEYS[4] event stream
# ARGV[1] token, ARGV[2] fence, ARGV[3] current subscription ('' for the initial one),
#   ARGV[4] failure kind, ARGV[5] agent id, ARGV[6] event stream max length,
#   ARGV[7] the current subscription's id
# Returns {1} when recorded now, {0} when this burst was already recorded or the fence is stale.
NO_VIABLE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] or redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return {0}
end
local marker = ARGV[3] .. '#' .. (redis.call('HGET', KEYS[3], 'switch_count') or '0')
if redis.call('HGET', KEYS[3], 'no_viable_for') == marker then return {0} end
redis.call('HSET', KEYS[3], 'no_viable_for', marker)
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[6], '*', 'type', 'no_viable_subscription',
  'agent_id', ARGV[5], 'from', ARGV[7], 'kind', ARGV[4])
return {1}
"""


@dataclass(frozen=True, slots=True)
class SubscriptionScripts:
    assign: AsyncScript
    no_viable: AsyncScript
    refuse: AsyncScript
    enable: AsyncScript
    standings: AsyncScript

    @classmethod
    def register(cls, redis: Redis) -> SubscriptionScripts:
        return cls(
            assign=redis.register_script(ASSIGN),
            no_viable=redis.register_script(NO_VIABLE),
            refuse=redis.register_script(REFUSE),
            enable=redis.register_script(ENABLE),
            standings=redis.register_script(STANDINGS),
        )

    def all(self) -> list[AsyncScript]:
        return [getattr(self, f.name) for f in fields(self)]
