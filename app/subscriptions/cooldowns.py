"""Each subscription's standing with its agent: active, cooling until a time, or disabled.

One hash per agent (`AgentKeys.refusals`, in the agent's hash slot), one field per refused
subscription holding JSON `{state, kind, at, until, counts}`; times are Unix milliseconds of
the Redis clock, so every worker judges "has its time ended" by the same clock. A cooling
subscription becomes a candidate again by itself when `until` passes; a disabled one only
when an operator enables it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from redis.commands.core import AsyncScript

from app.redis import as_text, guarded

State = Literal["active", "cooling", "disabled"]

# Record a refusal: count it by kind, and cool the subscription until now + cooldown (never
# shortening a later `until` already there) or disable it. A disabled subscription stays
# disabled whatever else refuses it, until enabled.
# KEYS[1] the agent's refusals hash
# ARGV[1] subscription, ARGV[2] kind, ARGV[3] cooldown in ms ('' : disable)
# Returns {state, until ms ('' when disabled), now ms}
REFUSE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local raw = redis.call('HGET', KEYS[1], ARGV[1])
local r = raw and cjson.decode(raw) or {}
if type(r.counts) ~= 'table' then r.counts = {} end
r.counts[ARGV[2]] = (tonumber(r.counts[ARGV[2]]) or 0) + 1
r.kind = ARGV[2]
r.at = now
if ARGV[3] == '' or r.state == 'disabled' then
  r.state = 'disabled'
  r['until'] = nil
else
  local untl = now + tonumber(ARGV[3])
  if r.state == 'cooling' and tonumber(r['until']) and tonumber(r['until']) > untl then
    untl = tonumber(r['until'])
  end
  r.state = 'cooling'
  r['until'] = untl
end
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(r))
return {r.state, tostring(r['until'] or ''), tostring(now)}
"""

# Read every standing with the Redis clock's now (a TIME in a pipeline is refused by a
# cluster; in a script it is served by the node of the agent's slot).
# KEYS[1] the agent's refusals hash
# Returns {now ms, subscription, JSON, subscription, JSON, ...}
STANDINGS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local reply = redis.call('HGETALL', KEYS[1])
table.insert(reply, 1, tostring(now))
return reply
"""

# Make a cooling or disabled subscription active now (its counts stay).
# KEYS[1] the agent's refusals hash
# ARGV[1] subscription
# Returns the state it had: 'active' (nothing to do), 'cooling' or 'disabled'
ENABLE = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 'active' end
local r = cjson.decode(raw)
local was = r.state or 'active'
if was == 'active' then return was end
r.state = 'active'
r['until'] = nil
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(r))
return was
"""


@dataclass(frozen=True, slots=True)
class Standing:
    """One subscription's record, as stored."""

    state: State = "active"
    kind: str | None = None
    at_ms: int | None = None
    until_ms: int | None = None
    counts: dict[str, int] = field(default_factory=dict)

    def state_at(self, now_ms: int) -> State:
        if self.state == "cooling" and (self.until_ms is None or self.until_ms <= now_ms):
            return "active"
        return self.state

    def viable(self, now_ms: int) -> bool:
        return self.state_at(now_ms) == "active"

    def public(self, now_ms: int) -> dict[str, Any]:
        state = self.state_at(now_ms)
        return {
            "state": state,
            "kind": self.kind,
            "refused_at": _iso(self.at_ms),
            "until": _iso(self.until_ms),
            "retry_in": round((self.until_ms - now_ms) / 1000, 3)
            if state == "cooling" and self.until_ms is not None
            else None,
            "refusals": dict(self.counts),
        }


@dataclass(frozen=True, slots=True)
class Standings:
    """Every refused subscription's standing, read at `now_ms` of the Redis clock."""

    by_subscription: dict[str, Standing]
    now_ms: int

    def of(self, subscription: str) -> Standing:
        return self.by_subscription.get(subscription, Standing())

    def viable(self, subscription: str) -> bool:
        return self.of(subscription).viable(self.now_ms)

    def back_in(self, subscriptions: tuple[str, ...]) -> float | None:
        """Seconds until the first of these cooling subscriptions is a candidate again; None
        if none is cooling (all disabled)."""
        ends = [
            s.until_ms
            for s in (self.of(sub) for sub in subscriptions)
            if s.state_at(self.now_ms) == "cooling" and s.until_ms is not None
        ]
        return max(0.0, (min(ends) - self.now_ms) / 1000) if ends else None


async def read(script: AsyncScript, refusals_key: str) -> Standings:
    """Every subscription's standing, now."""
    now, *flat = await guarded(script(keys=[refusals_key]))
    pairs = zip(flat[::2], flat[1::2], strict=True)
    return Standings({as_text(k): _standing(as_text(v)) for k, v in pairs}, int(as_text(now)))


async def refuse(
    script: AsyncScript, refusals_key: str, subscription: str, kind: str, cooldown: float | None
) -> Standing:
    """Record a refusal; `cooldown` None disables the subscription."""
    ms = "" if cooldown is None else str(max(0, round(cooldown * 1000)))
    state, until, now = await guarded(script(keys=[refusals_key], args=[subscription, kind, ms]))
    until_text = as_text(until)
    return Standing(
        state="disabled" if as_text(state) == "disabled" else "cooling",
        kind=kind,
        at_ms=int(as_text(now)),
        until_ms=int(until_text) if until_text else None,
    )


async def enable(script: AsyncScript, refusals_key: str, subscription: str) -> State:
    """Make the subscription active again; returns the state it had."""
    was = as_text(await guarded(script(keys=[refusals_key], args=[subscription])))
    return "disabled" if was == "disabled" else "cooling" if was == "cooling" else "active"


def _standing(text: str) -> Standing:
    try:
        data = json.loads(text)
    except ValueError:
        return Standing()
    if not isinstance(data, dict):
        return Standing()
    state = data.get("state")
    counts = data.get("counts")
    return Standing(
        state=state if state in ("active", "cooling", "disabled") else "active",
        kind=data.get("kind") if isinstance(data.get("kind"), str) else None,
        at_ms=_int(data.get("at")),
        until_ms=_int(data.get("until")),
        counts={str(k): int(v) for k, v in counts.items()} if isinstance(counts, dict) else {},
    )


def _int(value: object) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _iso(epoch_ms: int | None) -> str | None:
    if epoch_ms is None:
        return None
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).isoformat(timespec="milliseconds")
