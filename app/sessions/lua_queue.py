"""The Lua helpers of a session's queue: start deadlines, collect runs, the next run.

Composed into every session script by app/sessions/lua.py (`HELPERS`), after the core
helpers it calls (`load_run`, `finish_run`, `start`, `clear_stop`, `signal_holder`, `flat`)
and before the ones that call it. A queued run may carry a start deadline (`start_by`,
ended `expired` once passed) and, as a collect run, a time before which it may not start
(`start_at`): the holder then keeps the session and waits for it.
"""

from __future__ import annotations

QUEUE_HELPERS = """
local EXPIRED = 'not started within its start_within_seconds'

local function past(start_by, now)
  return start_by ~= nil and start_by ~= '' and tonumber(start_by) <= tonumber(now)
end

-- A queued run with a start deadline: the state's `start_by_due` is the earliest deadline
-- of the queue, so looking for expired runs costs nothing until one may have passed.
local function note_start_by(run)
  if not run.start_by then return end
  local due = redis.call('HGET', K_STATE, 'start_by_due')
  if not due or tonumber(run.start_by) < tonumber(due) then
    redis.call('HSET', K_STATE, 'start_by_due', run.start_by)
  end
end

-- End `expired` every queued run whose start deadline has passed (when one may have).
-- `now` is read only when a deadline is kept: most sessions have none, and the sweeper
-- calls this for every held session.
local function expire_queue()
  local due = redis.call('HGET', K_STATE, 'start_by_due')
  if not due then return end
  local now = now_us()
  if tonumber(due) > tonumber(now) then return end
  local earliest = nil
  for _, id in ipairs(redis.call('LRANGE', K_QUEUE, 0, -1)) do
    local run = load_run(id)
    if run and run.status == 'queued' and run.start_by then
      if past(run.start_by, now) then
        redis.call('LREM', K_QUEUE, 0, id)
        finish_run(id, 'expired', EXPIRED, now, 'expired')
      elseif not earliest or tonumber(run.start_by) < tonumber(earliest) then
        earliest = run.start_by
      end
    end
  end
  if earliest then
    redis.call('HSET', K_STATE, 'start_by_due', earliest)
  else
    redis.call('HDEL', K_STATE, 'start_by_due')
  end
end

-- How long a collect run still collects (ms), or nil when it may start: no earlier than
-- its collect_ms after the last message joined it, no later than 10 x collect_ms after
-- the first (`start_at` holds the earlier of the two).
local function collecting(run, now)
  if not run.start_at then return nil end
  local left = math.ceil((tonumber(run.start_at) - tonumber(now)) / 1000)
  if left <= 0 then return nil end
  return left
end

-- A collect run the holder waits for, as replies carry it: its two fields, the state one
-- with the wait in ms (not stored).
local function flat_waiting(run_id, run, now)
  local shown = cjson.decode(cjson.encode(run))
  shown.wait_ms = tostring(collecting(run, now) or 0)
  return {redis.call('HGET', K_RUNS, run_id), cjson.encode(shown)}
end

-- Start the next queued run, or note that none is left; a run past its start deadline
-- ends `expired` instead of starting. A collect run at the head that still collects stays
-- queued, and the holder keeps the session and waits for it (`waiting`): the third value
-- returned is then the wait in ms. Joining and starting are both decided in scripts, so a
-- message joins a collect run exactly when the run has not started.
local function pop_next(now, holder, stop_pending)
  while true do
    local run_id = redis.call('LINDEX', K_QUEUE, 0)
    if not run_id then
      redis.call('HSET', K_STATE, 'active_run', '', 'waiting', '')
      return nil
    end
    local run = load_run(run_id)
    if run and run.status == 'queued' and not past(run.start_by, now) then
      local wait = collecting(run, now)
      if wait then
        redis.call('HSET', K_STATE, 'active_run', '', 'waiting', run_id)
        if stop_pending then clear_stop() end
        return run_id, run, wait
      end
      redis.call('LPOP', K_QUEUE)
      return start(run_id, run, now, holder, nil, stop_pending)
    end
    redis.call('LPOP', K_QUEUE)
    if run and run.status == 'queued' then
      finish_run(run_id, 'expired', EXPIRED, now, 'expired')
    end
  end
end

-- The pair a reply carries for the run a holder goes on with: the one it runs, or the
-- collect run it waits for (with the wait).
local function flat_next(run_id, run, now)
  if run.status == 'queued' then return flat_waiting(run_id, run, now) end
  return flat(run_id, run)
end

-- The holder may be waiting for a collect run (`waiting`) while the queue changed under
-- it (the run was cancelled, a run was put before it): tell it to look again now. If
-- this message is lost, it looks when its wait ends anyway.
local function wake_waiting()
  local waiting = redis.call('HGET', K_STATE, 'waiting') or ''
  if waiting ~= '' then signal_holder(waiting, 'wake') end
end
"""
