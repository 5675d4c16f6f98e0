"""The Lua scripts that change a session, each one atomic step.

Conventions shared by all of them:
- every key is in the session's hash slot; a run record is `prefix .. 'run:' .. run_id`,
  built in the script from ARGV `prefix`, which carries the session's hash tag;
- timestamps come from Redis' own clock (TIME, in microseconds), one clock for every worker;
- a run reaches a terminal status only from `queued` or `running`, so no terminal status
  ever changes, whoever writes second;
- every terminal transition is announced on the finished channel; every signal to a
  session's holder on the control channel.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import IntEnum

from redis.asyncio import Redis
from redis.commands.core import AsyncScript


class SessionCode(IntEnum):
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


EVENTS_MAX_LENGTH = 1000
EVENTS_TTL_MS = 24 * 3600 * 1000

_HELPERS = (
    f"""
local EVENTS_MAX_LENGTH, EVENTS_TTL_MS = {EVENTS_MAX_LENGTH}, {EVENTS_TTL_MS}
"""
    + """
-- Append to the session's bounded event stream (`prefix .. 'events'`), and announce the
-- entry on the channel of the same name, which the server-sent-events readers watch.
local function emit(prefix, kind, run_id, text)
  local stream = prefix .. 'events'
  local id = redis.call('XADD', stream, 'MAXLEN', '~', EVENTS_MAX_LENGTH, '*',
                        'type', kind, 'run_id', run_id, 'text', text or '')
  redis.call('PEXPIRE', stream, EVENTS_TTL_MS)
  redis.call('PUBLISH', stream, id)
end

-- Microseconds: fine enough that two admissions never share a timestamp (Redis runs
-- scripts one at a time), so created_at orders runs as admitted.
local function now_us()
  local t = redis.call('TIME')
  return t[1] .. string.format('%06d', tonumber(t[2]))
end

-- A run that is queued or running ends with `status`; announced on the finished channel.
local function finish_run(prefix, run_id, status, error, now, finished_channel)
  local key = prefix .. 'run:' .. run_id
  local current = redis.call('HGET', key, 'status')
  if current ~= 'queued' and current ~= 'running' then return false end
  redis.call('HSET', key, 'status', status, 'finished_at', now, 'error', error)
  redis.call('PUBLISH', finished_channel, run_id)
  emit(prefix, status, run_id, error)
  return true
end

-- Pop queued runs until one is still queued; mark it running under this holder.
-- KEYS[3] is the session state, KEYS[4] the queue.
local function pop_next(prefix, fence, worker, now)
  while true do
    local run_id = redis.call('LPOP', KEYS[4])
    if not run_id then
      redis.call('HSET', KEYS[3], 'active_run', '')
      return nil
    end
    local key = prefix .. 'run:' .. run_id
    if redis.call('HGET', key, 'status') == 'queued' then
      redis.call('HSET', key, 'status', 'running', 'started_at', now, 'fence', fence,
                 'worker', worker)
      redis.call('HSET', KEYS[3], 'active_run', run_id)
      emit(prefix, 'started', run_id, '')
      return run_id
    end
  end
end

-- Cancel every queued run; returns their ids.
local function cancel_queue(prefix, reason, now, finished_channel)
  local cancelled = {}
  for _, run_id in ipairs(redis.call('LRANGE', KEYS[4], 0, -1)) do
    if finish_run(prefix, run_id, 'cancelled', reason, now, finished_channel) then
      table.insert(cancelled, run_id)
    end
  end
  redis.call('DEL', KEYS[4])
  return cancelled
end

-- After a grant (SET NX succeeded): bump the fence, and settle the run a lost holder left
-- marked running: `lost`, or back at the head of the queue once when retry_lost is '1'.
-- KEYS[2] is the fence counter, KEYS[3] the state, KEYS[4] the queue.
local function take_over(prefix, retention, now, finished_channel, retry_lost)
  local fence = redis.call('INCR', KEYS[2])
  redis.call('PEXPIRE', KEYS[2], retention)
  local active = redis.call('HGET', KEYS[3], 'active_run') or ''
  if active ~= '' then
    local key = prefix .. 'run:' .. active
    local attempt = tonumber(redis.call('HGET', key, 'attempt') or '1')
    if retry_lost == '1' and attempt < 2 and redis.call('HGET', key, 'status') == 'running' then
      redis.call('HSET', key, 'status', 'queued', 'attempt', attempt + 1)
      redis.call('HDEL', key, 'cancel_requested')
      redis.call('LPUSH', KEYS[4], active)
    else
      finish_run(prefix, active, 'lost', 'the worker running it stopped renewing its lease',
                 now, finished_channel)
    end
    redis.call('HSET', KEYS[3], 'active_run', '')
  end
  return fence
end

local function with_run(result, prefix, run_id)
  for _, v in ipairs(redis.call('HGETALL', prefix .. 'run:' .. run_id)) do
    table.insert(result, v)
  end
  return result
end

local function signal_holder(control_channel, resource, run_id, reason)
  redis.call('PUBLISH', control_channel,
             cjson.encode({resource = resource, run_id = run_id, reason = reason}))
end
"""
)

# Admission: take the session, or queue, or refuse, in one step.
# KEYS[1] lease, KEYS[2] fence, KEYS[3] state, KEYS[4] queue, KEYS[5] runs index,
#   KEYS[6] the new run, KEYS[7] idempotency key (unused when ARGV[7] is '0')
# ARGV[1] token, ARGV[2] lease ttl ms, ARGV[3] prefix, ARGV[4] run id, ARGV[5] busy policy,
#   ARGV[6] queue cap, ARGV[7] '1' if an idempotency key is given, ARGV[8] retention ms,
#   ARGV[9] worker, ARGV[10] finished channel, ARGV[11] control channel, ARGV[12] resource,
#   ARGV[13] '1' to run a lost holder's run once more, ARGV[14..] field, value pairs of the
#   new run record
# Returns {DUPLICATE, run_id} | {REJECTED, active_run} | {QUEUE_FULL, length}
#   | {QUEUED, position, active_run}
#   | {STARTED, fence, position, first run's HGETALL...}: the caller holds the lease and
#     must run `first` (the new run, or the head of a queue a lost holder left behind).
ADMIT = (
    _HELPERS
    + """
local prefix, run_id, policy = ARGV[3], ARGV[4], ARGV[5]
local retention, worker = tonumber(ARGV[8]), ARGV[9]
if ARGV[7] == '1' then
  local existing = redis.call('GET', KEYS[7])
  if existing then return {4, existing} end
end
if redis.call('EXISTS', KEYS[6]) == 1 then
  -- The client re-sent this admission after losing the reply: answer as the first did.
  if redis.call('GET', KEYS[1]) == ARGV[1] then
    local first = redis.call('HGET', KEYS[3], 'active_run') or ''
    if first ~= '' then return with_run({0, redis.call('GET', KEYS[2]), 0}, prefix, first) end
  end
  local index = redis.call('LPOS', KEYS[4], run_id)
  return {1, index and index + 1 or 0, redis.call('HGET', KEYS[3], 'active_run') or ''}
end
local now = now_us()
local generation = redis.call('HGET', KEYS[3], 'generation')
if not generation then
  generation = '1'
  redis.call('HSET', KEYS[3], 'generation', generation)
end
local granted = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
local active = redis.call('HGET', KEYS[3], 'active_run') or ''
local length = redis.call('LLEN', KEYS[4])
if not granted then
  if policy == 'reject' then return {2, active} end
  if length >= tonumber(ARGV[6]) then return {3, length} end
end

redis.call('HSET', KEYS[6], 'status', 'queued', 'created_at', now, 'generation', generation,
           unpack(ARGV, 14))
redis.call('PEXPIRE', KEYS[6], retention)
redis.call('ZADD', KEYS[5], now, run_id)
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', tonumber(now) - retention * 1000)
redis.call('PEXPIRE', KEYS[5], retention)
redis.call('PEXPIRE', KEYS[3], retention)
if ARGV[7] == '1' then redis.call('SET', KEYS[7], run_id, 'PX', retention) end
emit(prefix, 'queued', run_id, '')

if not granted then
  if policy == 'interrupt' then
    redis.call('LPUSH', KEYS[4], run_id)
    if active ~= '' and redis.call('HGET', prefix .. 'run:' .. active, 'status') == 'running' then
      redis.call('HSET', prefix .. 'run:' .. active, 'cancel_requested', 'interrupted')
      signal_holder(ARGV[11], ARGV[12], active, 'interrupted')
    end
    return {1, 1, active}
  end
  return {1, redis.call('RPUSH', KEYS[4], run_id), active}
end

-- Granted. A run still marked running belonged to a holder whose lease expired.
local fence = take_over(prefix, retention, now, ARGV[10], ARGV[13])
local position = redis.call('RPUSH', KEYS[4], run_id) - 1
local first = pop_next(prefix, fence, worker, now)
return with_run({0, fence, position}, prefix, first)
"""
)

# The sweeper: take over a session whose lease expired while it still had work.
# KEYS[1] lease, KEYS[2] fence, KEYS[3] state, KEYS[4] queue
# ARGV[1] token, ARGV[2] lease ttl ms, ARGV[3] prefix, ARGV[4] retention ms, ARGV[5] worker,
#   ARGV[6] finished channel, ARGV[7] '1' to run a lost holder's run once more
# Returns {BUSY} while a holder has the lease; {IDLE} with nothing to do;
#   {STARTED, fence, 0, first run's HGETALL...} when the caller now holds the session.
RECOVER = (
    _HELPERS
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return {14} end
local active = redis.call('HGET', KEYS[3], 'active_run') or ''
if active == '' and redis.call('LLEN', KEYS[4]) == 0 then return {15} end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local fence = take_over(ARGV[3], tonumber(ARGV[4]), now_us(), ARGV[6], ARGV[7])
local first = pop_next(ARGV[3], fence, ARGV[5], now_us())
if not first then
  redis.call('DEL', KEYS[1])
  return {15}
end
return with_run({0, fence, 0}, ARGV[3], first)
"""
)

# Drop a session from the index of sessions with work, unless it was admitted again since
# the sweeper read its score (the index is one key, so this is one slot).
# KEYS[1] index; ARGV[1] member, ARGV[2] the score read
# Returns 1 when removed.
FORGET = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) == tonumber(ARGV[2]) then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
"""

# The holder ends its current run and takes the next, or releases the session.
# KEYS[1] lease, KEYS[2] fence, KEYS[3] state, KEYS[4] queue, KEYS[5] the run,
#   KEYS[6] transcript of the run's generation
# ARGV[1] token, ARGV[2] fence, ARGV[3] lease ttl ms, ARGV[4] prefix, ARGV[5] run id,
#   ARGV[6] status, ARGV[7] output, ARGV[8] error, ARGV[9] retention ms, ARGV[10] worker,
#   ARGV[11] user turn (JSON), ARGV[12] assistant turn (JSON or ''),
#   ARGV[13] '1' to release even if runs are queued (shutdown), ARGV[14] finished channel,
#   ARGV[15] the subscription the run used ('' for none),
#   ARGV[16] reply text not yet sent as a delta event ('' for none)
# Returns {STALE} when the fence is no longer current (nothing written);
#   {NEXT, the next run's HGETALL...} with the lease renewed; {RELEASED, runs still queued}.
FINISH = (
    _HELPERS
    + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] or redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return {5}
end
local prefix, status, retention = ARGV[4], ARGV[6], tonumber(ARGV[9])
local current = redis.call('HGET', KEYS[3], 'active_run') or ''
if current ~= '' and current ~= ARGV[5] then
  -- A re-sent call (the first reply was lost): this holder already moved on to `current`.
  return with_run({6}, prefix, current)
end
local now = now_us()
if ARGV[16] ~= '' then emit(prefix, 'delta', ARGV[5], ARGV[16]) end
if redis.call('HGET', KEYS[5], 'status') == 'running' then
  redis.call('HSET', KEYS[5], 'status', status, 'output', ARGV[7], 'error', ARGV[8],
             'finished_at', now, 'subscription', ARGV[15])
  redis.call('PEXPIRE', KEYS[5], retention)
  if status == 'completed' or status == 'interrupted' then
    redis.call('RPUSH', KEYS[6], ARGV[11])
    if ARGV[12] ~= '' then redis.call('RPUSH', KEYS[6], ARGV[12]) end
    redis.call('PEXPIRE', KEYS[6], retention)
  end
  redis.call('PUBLISH', ARGV[14], ARGV[5])
  local error = ARGV[8]
  if status == 'completed' then error = '' end
  emit(prefix, status, ARGV[5], error)
end
if ARGV[13] ~= '1' then
  local next_run = pop_next(prefix, ARGV[2], ARGV[10], now)
  if next_run then
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
    return with_run({6}, prefix, next_run)
  end
end
redis.call('HSET', KEYS[3], 'active_run', '')
redis.call('DEL', KEYS[1])
return {7, redis.call('LLEN', KEYS[4])}
"""
)

# Deltas of a running run's reply, for the event stream; only from a current holder.
# KEYS[1] lease, KEYS[2] fence
# ARGV[1] token, ARGV[2] fence, ARGV[3] prefix, ARGV[4] run id, ARGV[5] text
# Returns {OK} | {STALE}
DELTA = (
    _HELPERS
    + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] or redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return {5}
end
emit(ARGV[3], 'delta', ARGV[4], ARGV[5])
return {12}
"""
)

# The holder's heartbeat: renew, and read a cancel request for the active run, so that a
# lost pub/sub signal is still honoured within one heartbeat.
# KEYS[1] lease, KEYS[2] state
# ARGV[1] token, ARGV[2] lease ttl ms, ARGV[3] prefix
# Returns {NOT_OWNED} | {OK} | {OK, active run id, requested reason}
RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {13} end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local active = redis.call('HGET', KEYS[2], 'active_run')
if active and active ~= '' then
  local reason = redis.call('HGET', ARGV[3] .. 'run:' .. active, 'cancel_requested')
  if reason then return {12, active, reason} end
end
return {12}
"""

# Cancel one run: a queued one is cancelled here; a running one is asked to stop.
# KEYS[1] the run, KEYS[2] queue
# ARGV[1] prefix, ARGV[2] run id, ARGV[3] finished channel, ARGV[4] control channel,
#   ARGV[5] resource
# Returns {NOT_FOUND} | {CANCELLED} | {CANCEL_REQUESTED} | {TERMINAL, status}
CANCEL = (
    _HELPERS
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {8} end
if status == 'queued' then
  redis.call('LREM', KEYS[2], 0, ARGV[2])
  finish_run(ARGV[1], ARGV[2], 'cancelled', 'cancelled by request', now_us(), ARGV[3])
  return {11}
end
if status == 'running' then
  redis.call('HSET', KEYS[1], 'cancel_requested', 'cancelled')
  signal_holder(ARGV[4], ARGV[5], ARGV[2], 'cancelled')
  return {10}
end
return {9, status}
"""
)

# Stop a session: cancel every queued run and ask the holder to stop the active one.
# KEYS[1] lease, KEYS[2] fence, KEYS[3] state, KEYS[4] queue
# ARGV[1] prefix, ARGV[2] finished channel, ARGV[3] control channel, ARGV[4] resource
# Returns {NOT_FOUND} for a session that does not exist; else {OK, run ids...}: the runs
#   cancelled or asked to stop (the active one last).
STOP = (
    _HELPERS
    + """
if redis.call('EXISTS', KEYS[3]) == 0 then return {8} end
local cancelled = cancel_queue(ARGV[1], 'session stopped', now_us(), ARGV[2])
local active = redis.call('HGET', KEYS[3], 'active_run')
if active and active ~= '' and
   redis.call('HGET', ARGV[1] .. 'run:' .. active, 'status') == 'running' then
  redis.call('HSET', ARGV[1] .. 'run:' .. active, 'cancel_requested', 'cancelled')
  signal_holder(ARGV[3], ARGV[4], active, 'cancelled')
  table.insert(cancelled, active)
end
table.insert(cancelled, 1, 12)
return cancelled
"""
)

# Reset a session: cancel everything, free the session and bump the fence and the
# generation, all at once. The old holder's writes are refused from here on.
# KEYS[1] lease, KEYS[2] fence, KEYS[3] state, KEYS[4] queue
# ARGV[1] prefix, ARGV[2] finished channel, ARGV[3] control channel, ARGV[4] resource,
#   ARGV[5] retention ms
# Returns {NOT_FOUND} for a session that does not exist; else {OK, generation, run ids...}
RESET = (
    _HELPERS
    + """
if redis.call('EXISTS', KEYS[3]) == 0 then return {8} end
local now = now_us()
local cancelled = cancel_queue(ARGV[1], 'session reset', now, ARGV[2])
local active = redis.call('HGET', KEYS[3], 'active_run')
if active and active ~= '' and
   finish_run(ARGV[1], active, 'cancelled', 'session reset', now, ARGV[2]) then
  signal_holder(ARGV[3], ARGV[4], active, 'reset')
  table.insert(cancelled, active)
end
redis.call('DEL', KEYS[1])
redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
local generation = redis.call('HINCRBY', KEYS[3], 'generation', 1)
if generation == 1 then generation = redis.call('HINCRBY', KEYS[3], 'generation', 1) end
redis.call('HSET', KEYS[3], 'active_run', '')
redis.call('PEXPIRE', KEYS[3], ARGV[5])
emit(ARGV[1], 'reset', '', tostring(generation))
local result = {12, generation}
for _, run_id in ipairs(cancelled) do table.insert(result, run_id) end
return result
"""
)


@dataclass(frozen=True, slots=True)
class SessionScripts:
    admit: AsyncScript
    finish: AsyncScript
    renew: AsyncScript
    cancel: AsyncScript
    stop: AsyncScript
    reset: AsyncScript
    recover: AsyncScript
    forget: AsyncScript
    delta: AsyncScript

    @classmethod
    def register(cls, redis: Redis) -> SessionScripts:
        sources = {"admit": ADMIT, "finish": FINISH, "renew": RENEW, "cancel": CANCEL,
                   "stop": STOP, "reset": RESET, "recover": RECOVER, "forget": FORGET,
                   "delta": DELTA}  # fmt: skip
        return cls(**{name: redis.register_script(src) for name, src in sources.items()})

    def all(self) -> list[AsyncScript]:
        return [getattr(self, f.name) for f in fields(self)]
