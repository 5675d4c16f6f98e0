"""Putting a running run back at the head of its session's queue, to run again from the
start: what a drain that ran out of time does to the runs still on the old subscription of
an agent that must reload (`app/subscriptions/reload.py`).

Any worker asks (REQUEST: a stop request "requeued:<why>", heard by the holder as any stop
is, at once or with its next renewal); the holder stops the run and, instead of recording
an outcome, REQUEUE puts it back at the head of the queue (queued again, its partial reply
dropped: nothing of it reaches the transcript) and starts the next run, which is that one,
under a new fence, in the same step. Both answer a re-send as the first call.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis

from app.errors import LeaseNotOwnedError
from app.locks import Lease
from app.sessions.lua import Code, Limits, Script, decode_run_pair
from app.sessions.models import Run
from app.sessions.ref import SessionRef
from app.sessions.writes import AfterFinish, Finished

# KEYS: SessionKeys.all
# ARGV[1] run id, ARGV[2] the fence it runs under, ARGV[3] why ("drain_timeout")
# Returns {OK} (asked now, or asked already) | {NOT_FOUND} (not running under that fence)
REQUEST = """
local function main()
  local run = load_run(ARGV[1])
  if not run or run.status ~= 'running' or run.fence ~= ARGV[2] then return {NOT_FOUND} end
  request_stop(ARGV[1], 'requeued', ARGV[3])
  return {OK}
end
"""

# KEYS: SessionKeys.all
# ARGV[1] token, ARGV[2] fence, ARGV[3] run id, ARGV[4] why, ARGV[5] '1' to release the
#   session instead of starting the next run (the worker is shutting down)
# Returns {STALE} when the fence is no longer current (nothing written);
#   {NEXT, the run's two fields, next run's two fields} with the lease renewed;
#   {RELEASED, runs queued, the run's two fields}
REQUEUE = """
local function main()
  local token, fence, run_id = ARGV[1], ARGV[2], ARGV[3]
  local state = redis.call('HMGET', K_STATE, 'fence', 'active_run', 'holder', 'stop_run', 'tools')
  local mine = redis.call('GET', K_LEASE) == token
  local run = load_run(run_id)
  if run and run.requeued_by == fence then
    -- A re-send: the first call put the run back; answer as it did.
    if mine and state[2] and state[2] ~= '' then
      return append(append({NEXT}, flat(run_id, run)), flat(state[2], load_run(state[2])))
    end
    return append({RELEASED, redis.call('LLEN', K_QUEUE)}, flat(run_id, run))
  end
  if not mine or state[1] ~= fence or not run or run.status ~= 'running' then return {STALE} end
  run.status, run.started_at, run.fence, run.worker = 'queued', '', '', ''
  run.requeued_by = fence
  run.requeues = tostring(tonumber(run.requeues or '0') + 1)
  save_run(run_id, run)
  redis.call('HDEL', K_RUNS, run_id .. ':t')
  if state[5] == run_id then redis.call('HDEL', K_STATE, 'tools') end
  redis.call('LPUSH', K_QUEUE, run_id)
  emit('requeued', run_id, ARGV[4])
  local now = now_us()
  if ARGV[5] ~= '1' then
    local next_id, next_run = pop_next(now, state[3] or '', state[4])
    if next_id then
      -- The run as it is now (started again, being at the head), as a re-send sees it.
      redis.call('PEXPIRE', K_LEASE, LEASE_TTL_MS)
      return append(append({NEXT}, flat(run_id, load_run(run_id))), flat(next_id, next_run))
    end
  end
  redis.call('HSET', K_STATE, 'active_run', '')
  clear_stop()
  redis.call('DEL', K_LEASE)
  return append({RELEASED, redis.call('LLEN', K_QUEUE)}, flat(run_id, run))
end
"""


class Requeues:
    def __init__(self, redis: Redis, limits: Limits) -> None:
        self._request = Script(redis, REQUEST, limits, name="requeue_request")
        self._requeue = Script(redis, REQUEUE, limits, name="requeue")

    @property
    def scripts(self) -> list[Script]:
        return [self._request, self._requeue]

    async def request(self, session: SessionRef, run_id: str, fence: int, why: str) -> bool:
        """Ask the holder of `run_id` (running under `fence`) to put it back at the head
        of its queue; False when it no longer runs under that fence."""
        reply = await self._request(session.keys.all, [run_id, fence, why])
        return Code(reply[0]) == Code.OK

    async def requeue(
        self, session: SessionRef, lease: Lease, run: Run, outcome: Finished, *, release: bool
    ) -> AfterFinish:
        """The holder's write for a run stopped to be re-queued (as `HolderWrites.finish`,
        whose place it takes). Raises LeaseNotOwnedError when the fence is stale."""
        sent = asyncio.get_running_loop().time()
        reply = await self._requeue(
            session.keys.all,
            [lease.token, lease.fence, run.run_id, outcome.reason, "1" if release else "0"],
        )
        code = Code(reply[0])
        if code == Code.STALE:
            raise LeaseNotOwnedError(lease.key)
        if code == Code.NEXT:
            lease.valid_until = sent + lease.ttl
            return AfterFinish(_run(reply[1:3]), _run(reply[3:5]))
        return AfterFinish(_run(reply[2:4]), None, int(reply[1]))


def _run(pair: list[Any]) -> Run:
    return Run.from_record(decode_run_pair(pair[0], pair[1]))
