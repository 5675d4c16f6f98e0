"""Admission: a message becomes a run that starts at once, waits in the queue, or is refused,
in one script; the session enters the index of sessions with work in the same round trip.

A re-sent admission (the client lost the first reply) is recognised by its run id, which
the first call stored, before anything else is looked at, so it is answered as the first
call was, also when it carries an idempotency key.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from app.errors import (
    MetadataTooLargeError,
    RedisUnavailableError,
)
from app.keys import ACTIVE_SESSIONS, WEBHOOK_SESSIONS
from app.redis import guarded, is_cluster
from app.sessions.admitted import decode_admission
from app.sessions.busy import CUTS_LUA
from app.sessions.busy import LUA as BUSY_LUA
from app.sessions.lua import Limits, Script
from app.sessions.models import Admission, NewRun
from app.sessions.ref import SessionRef

MAX_METADATA_BYTES = 8 * 1024

# KEYS: SessionKeys.all
# ARGV[1] token, ARGV[2] run id, ARGV[3] busy policy ('' for the session's default, else
#   the service's), ARGV[4] idempotency digest ('' for
#   none), ARGV[5] worker, ARGV[6] the run's record: what was asked (JSON), ARGV[7] '1' to
#   resolve an admission whose reply never came: answer as it did if it ran, else make sure
#   it never will (a tombstone under its run id) and answer {ABORTED}, ARGV[8] the URL
#   owed a completion webhook ('' for none), ARGV[9] how long the run may wait to start,
#   in ms ('' for as long as it takes: past it, a queued run ends `expired`), ARGV[10] the
#   message's collect_ms ('' for the session's default, else DEFAULT_COLLECT_MS), ARGV[11]
#   the agents that accept steering, comma-framed (",a,b,"; "," for none)
# Returns, to the first call and to any re-send of it (same run id and token):
#   {STARTED, position, first run's two fields, the new run's disposition}: the caller
#     holds the lease and must run `first` (the new run, or the head of a queue a lost
#     holder left behind), or wait for it when it is a collect run still collecting
#     (status queued, `wait_ms` in its state field);
#   {QUEUED, position, active run id, disposition, superseded run ids...};
#   {STEERED, running run id, 0, status}, {COLLECTED, collect run id, position, status}:
#     the message went into that run (its status now);
#   {DUPLICATE, the existing run's two fields};
#   {REJECTED, active run id}; {QUEUE_FULL, queue length}
# (decoded by `decode_admission`, app/sessions/admitted.py)
ADMIT = (
    BUSY_LUA
    + CUTS_LUA
    + """
local function queued_answer(position, active, run)
  return append({QUEUED, position, active, run.disposition or 'queued'}, run.superseded or {})
end

local function main()
  local token, run_id, digest = ARGV[1], ARGV[2], ARGV[4]
  local mine = load_run(run_id)
  if mine then
    -- This very call already ran and its reply was lost: answer as it did.
    if mine.status == 'aborted' then return {ABORTED} end
    local state = redis.call('HMGET', K_STATE, 'active_run', 'waiting')
    local active, waiting = state[1] or '', state[2] or ''
    local index = redis.call('LPOS', K_QUEUE, run_id)
    if redis.call('GET', K_LEASE) == token and (active ~= '' or waiting ~= '') then
      local position = 0
      if index then position = index + 1 end
      local first = active
      if first == '' then first = waiting end
      return append(append({STARTED, position}, flat_next(first, load_run(first), now_us())),
                    {mine.disposition})
    end
    return queued_answer(index and index + 1 or 0, active, mine)
  end
  local merged = redis.call('HGET', K_RUNS, 'in:' .. run_id)
  if merged then return merged_answer(merged) end
  if ARGV[7] == '1' then
    local now = now_us()
    save_run(run_id, {status = 'aborted', created_at = now})
    redis.call('ZADD', K_ORDER, now, run_id)
    return {ABORTED}
  end
  if digest ~= '' then
    local existing = redis.call('HGET', K_RUNS, 'idem:' .. digest)
    local run = existing and load_run(existing)
    if run then return append({DUPLICATE}, flat(existing, run)) end
    merged = existing and redis.call('HGET', K_RUNS, 'in:' .. existing)
    if merged then return merged_answer(merged) end
  end
  local state = redis.call('HMGET', K_STATE, 'generation', 'active_run', 'stop_run',
                           'default_policy', 'default_collect_ms')
  local generation, active = state[1] or '1', state[2] or ''
  local policy = ARGV[3]
  if policy == '' then policy = state[4] or DEFAULT_POLICY end
  local now = now_us()
  local asked = nil
  if policy == 'collect' or policy == 'steer' then
    asked = cjson.decode(ARGV[6])
    if policy == 'collect' then
      local joined = join(run_id, asked, digest, now)
      if joined then return joined end
    end
  end
  local granted = redis.call('SET', K_LEASE, token, 'NX', 'PX', LEASE_TTL_MS)
  if not granted then
    if policy == 'reject' then return {REJECTED, active} end
    if policy == 'steer' then
      local steered = steer(run_id, asked, active, ARGV[11], digest, now)
      if steered then return steered end
    end
    local length = redis.call('LLEN', K_QUEUE)
    if length >= QUEUE_CAP and policy ~= 'latest' then return {QUEUE_FULL, length} end
  end
  forget_expired(now)
  local run = {status = 'queued', created_at = now, generation = generation, attempt = '1',
               policy = policy}
  if ARGV[8] ~= '' then run.webhook = ARGV[8] end
  if ARGV[9] ~= '' then
    run.start_by = string.format('%.0f', tonumber(now) + tonumber(ARGV[9]) * 1000)
  end
  if policy == 'collect' then
    local collect_ms = tonumber(ARGV[10] ~= '' and ARGV[10] or state[5] or DEFAULT_COLLECT_MS)
    begin_collect(run, asked, collect_ms, now)
  end
  if digest ~= '' then
    run.idem = digest
    redis.call('HSET', K_RUNS, run_id, ARGV[6], 'idem:' .. digest, run_id)
  else
    redis.call('HSET', K_RUNS, run_id, ARGV[6])
  end
  redis.call('ZADD', K_ORDER, now, run_id)
  emit('queued', run_id, '')
  if not granted then
    run.disposition = run.disposition or 'queued'
    if policy == 'latest' then
      supersede_queue(run_id, run, now)
      wake_waiting()
    end
    local cut = CUTS[policy]
    if cut then
      if active ~= '' and request_stop(active, cut[1], cut[2] .. run_id) then
        run.disposition = cut[1]
        run[cut[3]] = active
      end
      save_run(run_id, run)
      retain()
      note_start_by(run)
      redis.call('LPUSH', K_QUEUE, run_id)
      wake_waiting()
      return queued_answer(1, active, run)
    end
    save_run(run_id, run)
    retain()
    note_start_by(run)
    return queued_answer(redis.call('RPUSH', K_QUEUE, run_id), active, run)
  end
  -- Granted: this worker holds the session now. A run still marked running belonged to
  -- a holder whose lease expired; the queue it left goes first.
  local holder = ARGV[5]
  settle_orphan(now, active)
  if policy == 'latest' then supersede_queue(run_id, run, now) end
  local stop_pending = active == '' and state[3]
  local holding = {'holder', holder, 'generation', generation, 'held_since', now}
  if redis.call('LLEN', K_QUEUE) == 0 and policy ~= 'collect' then
    run.disposition = 'started'
    start(run_id, run, now, holder, holding, stop_pending)
    retain()
    return append(append({STARTED, 0}, flat(run_id, run, ARGV[6])), {run.disposition})
  end
  redis.call('HSET', K_STATE, unpack(holding))
  run.disposition = run.disposition or 'queued'
  save_run(run_id, run)
  note_start_by(run)
  local position = redis.call('RPUSH', K_QUEUE, run_id) - 1
  local first_id, first = pop_next(now, holder, stop_pending)
  if first_id == run_id then position = 0 end
  retain()
  return append(append({STARTED, position}, flat_next(first_id, first, now)), {run.disposition})
end
"""
)


class Admissions:
    def __init__(
        self, redis: Redis, limits: Limits, *, worker: str, steerable: frozenset[str] = frozenset()
    ) -> None:
        self._redis = redis
        self._steerable = ",".join(["", *sorted(steerable), ""])
        self._timeout = limits.call_timeout
        self._script = Script(redis, ADMIT, limits, name="admit")
        self._queue_cap = limits.queue_cap
        self._worker = worker

    @property
    def scripts(self) -> list[Script]:
        return [self._script]

    async def admit(self, session: SessionRef, new: NewRun, run_id: str, token: str) -> Admission:
        """Admit `new` as run `run_id`; calling again with the same run id and token (after
        an error that left the outcome unknown) answers as the first call did."""
        admission = await self._call(session, new, run_id, token, resolve=False)
        if admission is None:  # `resolve` got there first and settled it: not admitted
            raise RedisUnavailableError("the admission was given up after Redis answered late")
        return admission

    async def resolve(
        self, session: SessionRef, new: NewRun, run_id: str, token: str
    ) -> Admission | None:
        """After `admit` raised without an answer: the admission as it was made, or None
        when it was not, and now never will be."""
        return await self._call(session, new, run_id, token, resolve=True)

    async def _call(
        self, session: SessionRef, new: NewRun, run_id: str, token: str, *, resolve: bool
    ) -> Admission | None:
        metadata = json.dumps(new.metadata, separators=(",", ":"))  # the one serialisation
        if len(metadata) > MAX_METADATA_BYTES:  # ASCII: characters are bytes
            raise MetadataTooLargeError(len(metadata), MAX_METADATA_BYTES)
        start_within_ms = (
            max(1, round(new.start_within_seconds * 1000)) if new.start_within_seconds else ""
        )
        asked = {
            "run_id": run_id,
            "tenant": session.tenant,
            "session_id": session.session_id,
            "input": new.text,
            "agent_id": new.agent_id,
            "busy_policy": new.busy_policy.value if new.busy_policy else "",
            "idempotency_key": new.idempotency_key or "",
            "timeout_ms": round(new.timeout_seconds * 1000) if new.timeout_seconds else "",
            "priority": new.priority,
            "start_within_ms": start_within_ms,
        }
        digest = _digest(new.idempotency_key) if new.idempotency_key else ""
        record = f'{json.dumps(asked)[:-1]},"metadata":{metadata}}}'
        args = [
            token,
            run_id,
            new.busy_policy.value if new.busy_policy else "",
            digest,
            self._worker,
            record,
            "1" if resolve else "0",
            new.webhook or "",
            start_within_ms,
            new.collect_ms or "",
            self._steerable,
        ]
        sent = asyncio.get_running_loop().time()
        reply = await self._indexed(session, session.keys.all, args, webhook=bool(new.webhook))
        return decode_admission(session, reply, run_id, token, sent, self._queue_cap)

    async def _indexed(
        self, session: SessionRef, keys: list[str], args: list[Any], *, webhook: bool
    ) -> Any:
        """Index the session (and, for a run owing a webhook, in the deliverer's index
        too), then admit, in one round trip.

        The index entries are written first: a crash after them leaves entries that are
        dropped later; a crash after the admission leaves the session indexed, so it is found.
        """
        index = {session.member: round(time.time() * 1000)}
        indexes = [ACTIVE_SESSIONS, WEBHOOK_SESSIONS] if webhook else [ACTIVE_SESSIONS]
        if is_cluster(self._redis):
            # The indexes and the session live on different nodes, and a cluster pipeline
            # sends to each node at once: indexes first takes two steps here.
            for name in indexes:
                await guarded(self._redis.zadd(name, index), self._timeout)
            return await self._script(keys, args)
        async with self._redis.pipeline(transaction=False) as pipe:
            for name in indexes:
                pipe.zadd(name, index)
            pipe.evalsha(self._script.sha, len(keys), *keys, *args)
            *_, reply = await guarded(pipe.execute(raise_on_error=False), self._timeout)
        if isinstance(reply, NoScriptError):  # after a Redis restart: load it and run again
            return await self._script(keys, args)
        if isinstance(reply, Exception):
            raise reply
        return reply


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:32]
