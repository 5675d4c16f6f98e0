"""The busy policies beyond enqueue and reject, as the admission script applies them.

`steer`: a message for a busy session whose running run's agent accepts steering (a
python agent that declares `accepts_steering`; the admitting worker passes the ids of those
agents) is recorded on that run (`steered_inputs`), not run on its own; it is published to
the holder, whichever worker that is, which puts it in the run's inbox (and the holder's
renewal reads how many there are, so a lost message arrives within one renewal). Any other
case is enqueued.

`collect`: a message joins the session's last queued run if that is a collect run not yet
started and holding fewer than `MAX_COLLECTED` messages; otherwise it makes a new collect
run. A collect run may start `collect_ms` after the last message joined it, and at the
latest 10 x `collect_ms` after the first (`start_at`, kept by the script on every join);
whether it may start is decided by `pop_next` in the scripts that start runs, and joining
by the admission script, so a message joins exactly the runs that have not started.

Both leave a marker `in:<message id>` in the runs hash (`steered:<run>` or
`collected:<run>`), so a re-sent admission, or a retry with the same idempotency key,
answers as the first did.

A run that completes before its agent read every message steered into it does not take
the unread ones: FINISH turns each into a queued run of its own (at the head of the queue,
in order), under the message's id, so no steered message goes unanswered.

`interrupt`, `rollback` and `latest` cut into the session's work instead (`CUTS_LUA`): the
first two ask the holder to stop the running run, the last ends every queued run.
"""

from __future__ import annotations

MAX_STEERED = 20
"""Messages steered into one run at most; past it, messages are enqueued."""
MAX_COLLECTED = 20
"""Messages one collect run takes at most; the next one starts another collect run."""
DEFAULT_COLLECT_MS = 1500
COLLECT_CAP_FACTOR = 10
"""A collect run starts at the latest this many collect_ms after its first message."""

# Lua functions for ADMIT. `asked` is the new message's record (decoded), `steerable` the
# comma-framed ids of the agents that accept steering (",a,b,").
LUA = f"""
local MAX_STEERED, MAX_COLLECTED = {MAX_STEERED}, {MAX_COLLECTED}
local COLLECT_CAP_FACTOR, DEFAULT_COLLECT_MS = {COLLECT_CAP_FACTOR}, {DEFAULT_COLLECT_MS}

-- The answer to a message that was steered or collected, from its marker (also for a
-- re-sent call): {{STEERED or COLLECTED, run id, position in the queue (0: not queued),
-- the run's status now}}.
local function merged_answer(marker)
  local kind, target = string.match(marker, '^([a-z]+):(.*)$')
  local index = redis.call('LPOS', K_QUEUE, target)
  local code = COLLECTED
  if kind == 'steered' then code = STEERED end
  local run = load_run(target)
  return {{code, target, index and index + 1 or 0, run and run.status or 'queued'}}
end

local function mark(message_id, marker, digest)
  redis.call('HSET', K_RUNS, 'in:' .. message_id, marker)
  if digest ~= '' then redis.call('HSET', K_RUNS, 'idem:' .. digest, message_id) end
  retain()
  return merged_answer(marker)
end

-- Steer the message into the running run, if its agent accepts steering; nil otherwise.
local function steer(message_id, asked, active, steerable, digest, now)
  if active == '' then return nil end
  local target = load_run(active)
  if not target or target.status ~= 'running' then return nil end
  if redis.call('HGET', K_STATE, 'stop_run') == active then return nil end
  local agent = cjson.decode(redis.call('HGET', K_RUNS, active)).agent_id
  if asked.agent_id ~= agent or not string.find(steerable, ',' .. agent .. ',', 1, true) then
    return nil
  end
  local inputs = target.steered_inputs or {{}}
  if #inputs >= MAX_STEERED then return nil end
  table.insert(inputs, asked.input)
  target.steered_inputs = inputs
  target.steered_ids = append(target.steered_ids or {{}}, {{message_id}})
  save_run(active, target)
  -- What the message asked, kept (with no record of how it went, it is no run): should
  -- the run end without its agent reading it, it becomes a run of its own (FINISH).
  redis.call('HSET', K_RUNS, message_id, ARGV[6])
  redis.call('HSET', K_STATE, 'steered', #inputs)
  emit('steered', active, cjson.encode({{text = asked.input, index = #inputs}}))
  redis.call('PUBLISH', CONTROL_CHANNEL, cjson.encode({{session = K_STATE, run_id = active,
    steer = {{index = #inputs, text = asked.input}}}}))
  return mark(message_id, 'steered:' .. active, digest)
end

-- Join the session's last queued run if it is a collect run that has not started and has
-- room; nil otherwise.
local function join(message_id, asked, digest, now)
  local tail = redis.call('LINDEX', K_QUEUE, -1)
  local target = tail and load_run(tail)
  if not target or target.status ~= 'queued' or not target.start_at then return nil end
  if #target.inputs >= MAX_COLLECTED then return nil end
  table.insert(target.inputs, asked.input)
  target.joined = append(target.joined or {{}}, {{message_id}})
  local window = tonumber(target.collect_ms) * 1000
  target.start_at = string.format('%.0f', math.min(tonumber(now) + window,
    tonumber(target.first_at) + COLLECT_CAP_FACTOR * window))
  save_run(tail, target)
  emit('collected', tail, cjson.encode({{text = asked.input, index = #target.inputs}}))
  return mark(message_id, 'collected:' .. tail, digest)
end

-- Make `run` a collect run of one message so far.
local function begin_collect(run, asked, collect_ms, now)
  run.collect_ms, run.first_at, run.inputs = tostring(collect_ms), now, {{asked.input}}
  run.start_at = string.format('%.0f', tonumber(now) + collect_ms * 1000)
  run.disposition = 'collected'
end
"""

# Lua for ADMIT: the policies that cut into the session's work (`interrupt`, `rollback`,
# `latest`).
CUTS_LUA = """
-- What `policy` does to the run in progress: status it is stopped with, reason prefix,
-- the field naming it on the new run.
local CUTS = {
  interrupt = {'interrupted', 'interrupted_by:', 'interrupted_run_id'},
  rollback = {'rolled_back', 'rolled_back_by:', 'rolled_back_run_id'},
}

-- `latest`: every queued, not started run ends `superseded`.
local function supersede_queue(run_id, run, now)
  local ended = {}
  for _, id in ipairs(redis.call('LRANGE', K_QUEUE, 0, -1)) do
    if finish_run(id, 'superseded', 'superseded by a later message', now,
                  'superseded_by:' .. run_id) then
      table.insert(ended, id)
    end
  end
  redis.call('DEL', K_QUEUE)
  if #ended > 0 then run.superseded = ended end
end
"""
