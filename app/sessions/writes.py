"""What a holder writes: reply deltas while a run goes on (EMIT, app/sessions/emits.py), and
its outcome at the end, which also starts the next queued run or releases the session (one
script: no instant in which the session is free while runs wait).

Every write is fenced: refused (STALE) once the session's fence moved past the holder's,
after a reset or when another worker took the session over. A re-sent write is answered
as the first one was: FINISH knows its own outcome by the fence it recorded on the run,
EMIT by the number of the last batch it wrote.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from app.errors import LeaseNotOwnedError
from app.locks import Lease
from app.sessions.deltas import Item
from app.sessions.emits import Emits
from app.sessions.lua import Code, Limits, Script, decode_run_pair
from app.sessions.models import Run, RunStatus
from app.sessions.ref import SessionRef

# KEYS: SessionKeys.all
# ARGV[1] token, ARGV[2] fence, ARGV[3] run id, ARGV[4] status, or "<status>:<reason>" for
#   a run that was stopped, ARGV[5] output, ARGV[6] error, ARGV[7] subscription ('' for
#   none), ARGV[8] '1' to release even with runs queued, ARGV[9] how many of the messages
#   steered into the run its agent read ('' for all)
# The part of the output not yet sent as delta events is sent from here; the transcript
# turns are built here from the stored input and the output.
# Returns {STALE} when the fence is no longer current (nothing written);
#   {NEXT, ended run's two fields, next run's two fields} with the lease renewed;
#   {RELEASED, runs still queued, ended run's two fields}
FINISH = """
-- The run's tool calls and what the tools answered, as transcript turns, in order.
local function tool_turns(run_id)
  local kept = redis.call('HGET', K_RUNS, run_id .. ':t')
  if not kept then return {} end
  local calls, order, turns = {}, {}, {}
  for _, item in ipairs(cjson.decode(kept)) do
    local data = cjson.decode(item[2])
    local id = data.toolCallId
    if item[1] == 'tool_call_start' then
      calls[id] = {role = 'tool_call', run_id = run_id, tool_call_id = id,
                   name = data.toolCallName or '', args = '', text = ''}
      table.insert(order, id)
    elseif item[1] == 'tool_call_args' and calls[id] then
      calls[id].args = calls[id].args .. (data.delta or '')
    elseif item[1] == 'tool_call_result' then
      table.insert(order, {role = 'tool', run_id = run_id, tool_call_id = id,
                           text = data.content or ''})
    end
  end
  for _, entry in ipairs(order) do
    if type(entry) == 'string' then entry = calls[entry] end
    table.insert(turns, cjson.encode(entry))
  end
  return turns
end

-- A completed run whose agent did not read every message steered into it keeps those it
-- read; each unread one becomes a queued run of its own, first in the queue, in order.
local function requeue_unread(run, read, now)
  local ids, inputs = run.steered_ids or {}, run.steered_inputs or {}
  for i = #ids, read + 1, -1 do
    local id = ids[i]
    redis.call('HDEL', K_RUNS, 'in:' .. id)
    save_run(id, {status = 'queued', created_at = now, generation = run.generation,
                  attempt = '1', policy = 'steer', disposition = 'queued'})
    -- (one microsecond apart, so that listings keep their order)
    redis.call('ZADD', K_ORDER, string.format('%.0f', tonumber(now) + i - read), id)
    redis.call('LPUSH', K_QUEUE, id)
    emit('queued', id, '')
    table.remove(ids, i)
    table.remove(inputs, i)
  end
  run.steered_ids, run.steered_inputs = ids, inputs
end

local function main()
  local token, fence, run_id = ARGV[1], ARGV[2], ARGV[3]
  local status, reason = string.match(ARGV[4], '^([^:]+):?(.*)$')
  local state = redis.call('HMGET', K_STATE, 'fence', 'active_run', 'sent', 'holder', 'stop_run',
                           'tools', 'waiting')
  local run = load_run(run_id)
  local mine = redis.call('GET', K_LEASE) == token
  if run and run.closed_by == fence then
    -- A re-send: the first call recorded this outcome; answer as it did.
    if mine and state[2] and state[2] ~= '' and state[2] ~= run_id then
      return append(append({NEXT}, flat(run_id, run)), flat(state[2], load_run(state[2])))
    end
    if mine and state[7] and state[7] ~= '' then
      local waiting = load_run(state[7])
      return append(append({NEXT}, flat(run_id, run)), flat_next(state[7], waiting, now_us()))
    end
    return append({RELEASED, redis.call('LLEN', K_QUEUE)}, flat(run_id, run))
  end
  if not mine or state[1] ~= fence or not run then return {STALE} end
  local now = now_us()
  local output = ARGV[5]
  local sent = tonumber(state[3] or '0')
  if sent < #output then emit('delta', run_id, string.sub(output, sent + 1)) end
  local asked = redis.call('HGET', K_RUNS, run_id)
  if run.status == 'running' then
    run.status, run.output, run.error, run.finished_at = status, output, ARGV[6], now
    run.subscription, run.closed_by = ARGV[7], fence
    if status == 'completed' then run.error = '' end
    if reason ~= '' then run.reason = reason end
    if status == 'failed' then redis.call('HSET', K_STATE, 'last_error', ARGV[6]) end
    local read = tonumber(ARGV[9] or '')
    if status == 'completed' and read and #(run.steered_inputs or {}) > read then
      requeue_unread(run, read, now)
    end
    save_run(run_id, run)
    if status == 'completed' or status == 'interrupted' then
      local turns = {}
      for _, input in ipairs(run.inputs or {cjson.decode(asked).input}) do
        table.insert(turns, cjson.encode({role = 'user', text = input, run_id = run_id}))
      end
      for _, input in ipairs(run.steered_inputs or {}) do  -- in the order they arrived
        table.insert(turns, cjson.encode({role = 'user', text = input, run_id = run_id}))
      end
      if state[6] == run_id then append(turns, tool_turns(run_id)) end
      if output ~= '' then
        table.insert(turns, cjson.encode({role = 'assistant', text = output, run_id = run_id}))
      end
      redis.call('RPUSH', K_TRANSCRIPT, unpack(turns))
      redis.call('PEXPIRE', K_TRANSCRIPT, RETENTION_MS)
    end
    emit(status, run_id, run.error)
    owe_webhook(run_id, run, now)
  end
  -- (The session's data was kept at admission and by every renewal since.)
  if ARGV[8] ~= '1' then
    local next_id, next_run = pop_next(now, state[4] or '', state[5])
    if next_id then
      redis.call('PEXPIRE', K_LEASE, LEASE_TTL_MS)
      return append(append({NEXT}, flat(run_id, run, asked)), flat_next(next_id, next_run, now))
    end
    redis.call('DEL', K_LEASE)
    return append({RELEASED, 0}, flat(run_id, run, asked))
  end
  redis.call('HSET', K_STATE, 'active_run', '', 'waiting', '')
  redis.call('DEL', K_LEASE)
  return append({RELEASED, redis.call('LLEN', K_QUEUE)}, flat(run_id, run, asked))
end
"""

# The holder waited for a collect run to finish collecting (or was told to stop waiting):
# start the next run if it may start, or say how long to wait still, or release.
# KEYS: SessionKeys.all
# ARGV[1] token, ARGV[2] this call's id (a re-send carries the same), ARGV[3] '1' to release
#   even with runs queued (shutdown)
# Returns {STALE} when the token no longer holds the lease; {NEXT, the next run's two
#   fields} (status queued and `wait_ms` while it still collects) with the lease renewed;
#   {RELEASED, runs still queued}
TAKE = """
local function main()
  local token, call = ARGV[1], ARGV[2]
  local state = redis.call('HMGET', K_STATE, 'holder', 'stop_run', 'took', 'active_run',
                           'waiting')
  local mine = redis.call('GET', K_LEASE) == token
  local now = now_us()
  if state[3] == call then
    -- A re-send: the first call started or kept waiting for this run, or released.
    local again = (state[4] ~= '' and state[4]) or (state[5] ~= '' and state[5]) or nil
    if mine and again then return append({NEXT}, flat_next(again, load_run(again), now)) end
    if not mine then return {RELEASED, redis.call('LLEN', K_QUEUE)} end
  end
  if not mine then return {STALE} end
  redis.call('HSET', K_STATE, 'took', call)
  if ARGV[3] ~= '1' then
    local next_id, next_run = pop_next(now, state[1] or '', state[2])
    if next_id then
      redis.call('PEXPIRE', K_LEASE, LEASE_TTL_MS)
      return append({NEXT}, flat_next(next_id, next_run, now))
    end
  end
  redis.call('HSET', K_STATE, 'active_run', '', 'waiting', '')
  redis.call('DEL', K_LEASE)
  return {RELEASED, redis.call('LLEN', K_QUEUE)}
end
"""


@dataclass(frozen=True, slots=True)
class Finished:
    """The outcome of one run, as its holder writes it."""

    status: RunStatus
    output: str = ""
    error: str = ""
    subscription: str = ""
    reason: str = ""
    """Who stopped the run, if it did not end by itself: stop, api, interrupted_by:<run>,
    timeout, shutdown, client_disconnected."""
    steered_read: int | None = None
    """How many of the messages steered into the run its agent read (None: all)."""


@dataclass(frozen=True, slots=True)
class AfterFinish:
    """The run as recorded, and what the holder does next: run `next_run`, or stop (the
    session was released, with `queued` runs left behind when released on shutdown)."""

    ended: Run
    next_run: Run | None
    queued: int = 0


class HolderWrites:
    def __init__(self, redis: Redis, limits: Limits) -> None:
        self._finish = Script(redis, FINISH, limits, name="finish")
        self._emits = Emits(redis, limits)
        self._take = Script(redis, TAKE, limits, name="take")

    @property
    def scripts(self) -> list[Script]:
        return [self._finish, self._emits.script, self._take]

    async def take(
        self, session: SessionRef, lease: Lease, *, release: bool
    ) -> tuple[Run | None, int]:
        """After waiting for a collect run: the run to go on with (a collect run still
        collecting has status queued), or None with the session released and how many runs
        it left queued. Raises LeaseNotOwnedError when the lease is no longer this
        holder's: nothing was written."""
        sent = asyncio.get_running_loop().time()
        call = secrets.token_hex(8)
        reply = await self._take(session.keys.all, [lease.token, call, "1" if release else "0"])
        code = Code(reply[0])
        if code == Code.STALE:
            raise LeaseNotOwnedError(lease.key)
        if code == Code.NEXT:
            lease.valid_until = sent + lease.ttl
            return _run(reply[1:3]), 0
        return None, int(reply[1])

    async def finish(
        self, session: SessionRef, lease: Lease, run: Run, outcome: Finished, *, release: bool
    ) -> AfterFinish:
        """Record the outcome and start the next queued run (renewing the lease), or
        release. Raises LeaseNotOwnedError when the fence is stale: nothing was written."""
        sent = asyncio.get_running_loop().time()
        reply = await self._finish(
            session.keys.all,
            [
                lease.token,
                lease.fence,
                run.run_id,
                f"{outcome.status.value}:{outcome.reason}"
                if outcome.reason
                else outcome.status.value,
                outcome.output,
                outcome.error,
                outcome.subscription,
                "1" if release else "0",
                "" if outcome.steered_read is None else outcome.steered_read,
            ],
        )
        code = Code(reply[0])
        if code == Code.STALE:
            raise LeaseNotOwnedError(lease.key)
        if code == Code.NEXT:
            lease.valid_until = sent + lease.ttl
            return AfterFinish(_run(reply[1:3]), _run(reply[3:5]))
        return AfterFinish(_run(reply[2:4]), None, int(reply[1]))

    async def emit(
        self, session: SessionRef, lease: Lease, run_id: str, batch: int, items: list[Item]
    ) -> None:
        """Write batch `batch` of the run's reply text and events (app/sessions/emits.py)."""
        await self._emits.emit(session, lease, run_id, batch, items)


def _run(pair: list[Any]) -> Run:
    return Run.from_record(decode_run_pair(pair[0], pair[1]))
