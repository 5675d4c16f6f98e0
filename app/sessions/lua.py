"""What every session script shares: result codes, baked-in constants, Lua helpers.

Every session script takes the same KEYS (`SessionKeys.all`: lease, state, queue, runs,
order, transcript, events; control scripts add their reply key as KEYS[8]), so each one
declares every key it touches. Result codes come from `Code`, generated into the Lua;
limits and channels are baked into the script text when it is registered (`bake`), so no
call sends them. Each script's body is a function `main()`; the shared epilogue then sends
the events it emitted with one PUBLISH.

Run records live in the `runs` hash in two fields: `<id>` holds what was asked (JSON made
by the admitting worker; scripts only read `input` from it) and `<id>:s` how it went (JSON
of strings only, kept by the scripts). Timestamps are Redis' clock in microseconds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from app.keys import CONTROL_CHANNEL
from app.redis import guarded
from app.sessions.lua_queue import QUEUE_HELPERS


class Code(IntEnum):
    STARTED = 0
    QUEUED = 1
    REJECTED = 2
    QUEUE_FULL = 3
    DUPLICATE = 4
    STALE = 5
    NEXT = 6
    RELEASED = 7
    NOT_FOUND = 8
    TERMINAL = 9
    CANCEL_REQUESTED = 10
    CANCELLED = 11
    OK = 12
    NOT_OWNED = 13
    BUSY = 14
    IDLE = 15
    ABORTED = 16
    STEERED = 17
    COLLECTED = 18


EVENTS_MAX_LENGTH = 1000
EVENTS_TTL_MS = 24 * 3600 * 1000
REPLY_TTL_MS = 60_000
"""How long a control script's answer is kept for a re-send of the same request."""
MAX_ATTEMPTS = 3
"""A run whose holder died before confirming that its agent started is started again, up
to this many attempts in all; then it ends `lost`."""


@dataclass(frozen=True, slots=True)
class Limits:
    """The settings a session script needs, baked into its text at registration, and the
    time a call may take, its re-sends included (not baked)."""

    lease_ttl_ms: int
    retention_ms: int
    queue_cap: int
    retry_lost: bool
    call_timeout: float | None = None
    default_policy: str = "enqueue"
    """The busy policy of a message that names none, in a session that has no default."""


def bake(body: str, limits: Limits) -> str:
    constants: dict[str, Any] = {
        **{code.name: int(code) for code in Code},
        "LEASE_TTL_MS": limits.lease_ttl_ms,
        "RETENTION_MS": limits.retention_ms,
        "QUEUE_CAP": limits.queue_cap,
        "RETRY_LOST": limits.retry_lost,
        "DEFAULT_POLICY": limits.default_policy,
        "MAX_ATTEMPTS": MAX_ATTEMPTS,
        "EVENTS_MAX_LENGTH": EVENTS_MAX_LENGTH,
        "EVENTS_TTL_MS": EVENTS_TTL_MS,
        "REPLY_TTL_MS": REPLY_TTL_MS,
        "CONTROL_CHANNEL": CONTROL_CHANNEL,
    }
    prelude = "".join(f"local {name} = {_lua(value)}\n" for name, value in constants.items())
    return prelude + HELPERS + body + EPILOGUE


def _lua(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value))  # a JSON string literal is a valid Lua string literal


class Script:
    """One registered session script: EVALSHA, loaded again by itself after NOSCRIPT."""

    def __init__(self, redis: Redis, body: str, limits: Limits, *, name: str) -> None:
        self.name = name
        self.timeout = limits.call_timeout
        self._script: AsyncScript = redis.register_script(bake(body, limits))
        self.sha: str = str(self._script.sha)
        self.script: str = str(self._script.script)

    async def __call__(self, keys: list[str], args: list[Any]) -> Any:
        return await guarded(self._script(keys=keys, args=args), self.timeout)


_CORE = """
local K_LEASE, K_STATE, K_QUEUE, K_RUNS = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local K_ORDER, K_TRANSCRIPT, K_EVENTS = KEYS[5], KEYS[6], KEYS[7]
local K_OUTBOX, K_OUTBOX_DUE = KEYS[8], KEYS[9]
local last_event = nil

local function now_us()
  local t = redis.call('TIME')
  return t[1] .. string.format('%06d', tonumber(t[2]))
end

-- Append to the session's event stream; announced once, by the epilogue.
local function emit(kind, run_id, text)
  last_event = redis.call('XADD', K_EVENTS, 'MAXLEN', '~', EVENTS_MAX_LENGTH, '*',
                          'type', kind, 'run_id', run_id, 'text', text or '')
end

local function load_run(run_id)
  local raw = redis.call('HGET', K_RUNS, run_id .. ':s')
  if not raw then return nil end
  return cjson.decode(raw)
end

local function save_run(run_id, run)
  redis.call('HSET', K_RUNS, run_id .. ':s', cjson.encode(run))
end

-- A run as replies carry it: what was asked, and how it went (two JSON strings).
local function flat(run_id, run, asked)
  return {asked or redis.call('HGET', K_RUNS, run_id), cjson.encode(run)}
end

local function append(result, more)
  for _, v in ipairs(more) do table.insert(result, v) end
  return result
end

-- Keep the session's data for the retention period from now; the fence lives in the
-- state hash, so it never expires while a holder renews, runs wait or data is kept.
local function retain()
  redis.call('PEXPIRE', K_STATE, RETENTION_MS)
  redis.call('PEXPIRE', K_RUNS, RETENTION_MS)
  redis.call('PEXPIRE', K_ORDER, RETENTION_MS)
end

-- A run that asked for a completion webhook has reached its terminal status: owe it, in
-- the same step (a worker dying right after cannot lose it).
local function owe_webhook(run_id, run, now)
  if not run.webhook or run.webhook == '' then return end
  redis.call('HSET', K_OUTBOX, run_id, cjson.encode({
    run_id = run_id, url = run.webhook, status = 'pending', attempts = '0', created_at = now}))
  redis.call('ZADD', K_OUTBOX_DUE, math.floor(tonumber(now) / 1000), run_id)
  redis.call('PEXPIRE', K_OUTBOX, RETENTION_MS)
  redis.call('PEXPIRE', K_OUTBOX_DUE, RETENTION_MS)
end

-- A queued or running run ends with `status`; no terminal status ever changes. `reason`
-- says who ended it (api, stop, reset, ...), for runs that did not end by themselves.
local function finish_run(run_id, status, error, now, reason)
  local run = load_run(run_id)
  if not run or (run.status ~= 'queued' and run.status ~= 'running') then return nil end
  run.status, run.finished_at, run.error = status, now, error
  if reason then run.reason = reason end
  save_run(run_id, run)
  owe_webhook(run_id, run, now)
  emit(status, run_id, error)
  return run
end

local function clear_stop()
  redis.call('HDEL', K_STATE, 'stop_run', 'stop')
end

local function signal_holder(run_id, reason)
  redis.call('PUBLISH', CONTROL_CHANNEL,
             cjson.encode({session = K_STATE, run_id = run_id, reason = reason}))
end

-- Mark a run running for `holder` under a fresh fence: every run gets its own, higher
-- than every earlier run's of the session. `extra`: more state fields to set at once;
-- `stop_pending`: whether a stop request of an earlier run is left to clear.
local function start(run_id, run, now, holder, extra, stop_pending)
  local fence = redis.call('HINCRBY', K_STATE, 'fence', 1)
  run.status, run.started_at, run.fence, run.worker = 'running', now, tostring(fence), holder
  save_run(run_id, run)
  redis.call('HSET', K_STATE, 'active_run', run_id, 'sent', 0, 'batch', 0, 'confirmed', '',
             'waiting', '', 'steered', 0, unpack(extra or {}))
  if stop_pending then clear_stop() end
  emit('started', run_id, '')
  return run_id, run
end
"""

_CONTROL = """
-- Ask the holder to stop the active run with `status` (cancelled, interrupted), saying
-- why: written to the state (the holder's renewal reads it) and published (the holder
-- hears it at once) as "<status>:<reason>".
local function request_stop(run_id, status, reason)
  local run = load_run(run_id)
  if not run or run.status ~= 'running' then return false end
  local stop = status .. ':' .. reason
  redis.call('HSET', K_STATE, 'stop_run', run_id, 'stop', stop)
  signal_holder(run_id, stop)
  return true
end

-- Drop runs older than the retention period (ended ones only), with their idempotency
-- keys: up to 32 at one admission in 16 (by the clock), so a session admitting often
-- keeps up at little cost.
local function forget_expired(now)
  if tonumber(string.sub(now, -4)) % 16 ~= 0 then return end
  local cutoff = tonumber(now) - RETENTION_MS * 1000
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', K_ORDER, '-inf', cutoff, 'LIMIT', 0, 32)) do
    local run = load_run(id)
    if not run or (run.status ~= 'queued' and run.status ~= 'running') then
      redis.call('HDEL', K_RUNS, id, id .. ':s')
      if run and run.idem then redis.call('HDEL', K_RUNS, 'idem:' .. run.idem) end
      for _, message in ipairs(run and run.joined or {}) do
        redis.call('HDEL', K_RUNS, 'in:' .. message)
      end
      for _, message in ipairs(run and run.steered_ids or {}) do
        redis.call('HDEL', K_RUNS, 'in:' .. message, message)
      end
      redis.call('ZREM', K_ORDER, id)
    end
  end
end

-- A new holder settles the run a lost holder left marked running: started again (at the
-- head of the queue) if its agent never confirmed a start, or once more with RETRY_LOST;
-- else it ends `lost`.
local function settle_orphan(now, active)
  if active == '' then return end
  local run = load_run(active)
  if run and run.status == 'running' then
    local attempt = tonumber(run.attempt or '1')
    local confirmed = redis.call('HGET', K_STATE, 'confirmed') == active
    if (not confirmed and attempt < MAX_ATTEMPTS) or (RETRY_LOST and attempt < 2) then
      run.status, run.attempt, run.started_at, run.fence, run.worker =
        'queued', tostring(attempt + 1), '', '', ''
      run.start_by = nil  -- it started in time; its start is only being made again
      save_run(active, run)
      redis.call('LPUSH', K_QUEUE, active)
    else
      finish_run(active, 'lost', 'the worker running it stopped renewing its lease', now)
    end
  end
  redis.call('HSET', K_STATE, 'active_run', '')
  clear_stop()
end

"""

HELPERS = _CORE + QUEUE_HELPERS + _CONTROL
"""Every session script's helpers, in the order they call one another: the core (records,
events, starting a run), the queue's (app/sessions/lua_queue.py), then stopping, forgetting
and settling runs."""

EPILOGUE = """
local result = main()
if last_event then
  redis.call('PEXPIRE', K_EVENTS, EVENTS_TTL_MS)
  redis.call('PUBLISH', K_EVENTS, last_event)
end
return result
"""


def decode_run_pair(asked: Any, state: Any) -> dict[str, Any]:
    """A run record from its two stored JSON fields."""
    record: dict[str, Any] = json.loads(asked)
    record.update(json.loads(state))
    return record
