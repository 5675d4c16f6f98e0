"""Cancel, stop and reset, from any worker; and waking a worker to take a session over.

A queued run is cancelled in the script itself; a running one is asked to stop: the
request is written to the session's state (the holder's renewal reads it) and published
(the holder hears it at once). Reset also frees the session and moves its fence and
generation on, in the same script, so whatever the old holder writes afterwards is refused.

Each call carries a request id; its answer is kept briefly (REPLY_TTL_MS) under that id
(KEYS[8]), so a re-sent call (its reply was lost) gets the same answer and changes nothing
twice. A caller's Idempotency-Key becomes the request id, so a client retrying a reset
after a timeout does not reset twice either.
"""

from __future__ import annotations

import hashlib
import json
import secrets

from redis.asyncio import Redis

from app.errors import RunNotFoundError, RunTerminalError, SessionNotFoundError
from app.keys import WAKE_CHANNEL
from app.redis import as_text, guarded
from app.sessions.lua import Code, Limits, Script
from app.sessions.ref import SessionRef

_ANSWER = """
local K_REPLY = KEYS[8]

local function answer(result)
  redis.call('SET', K_REPLY, cjson.encode(result), 'PX', REPLY_TTL_MS)
  return result
end

local function cancel_queue(reason, now)
  local cancelled = {}
  for _, run_id in ipairs(redis.call('LRANGE', K_QUEUE, 0, -1)) do
    if finish_run(run_id, 'cancelled', reason, now) then table.insert(cancelled, run_id) end
  end
  redis.call('DEL', K_QUEUE)
  return cancelled
end
"""

# KEYS: SessionKeys.all, then KEYS[8] this request's reply key
# ARGV[1] run id
# Returns {NOT_FOUND} | {CANCELLED} | {CANCEL_REQUESTED} | {TERMINAL, status}
CANCEL = (
    _ANSWER
    + """
local function main()
  local prior = redis.call('GET', K_REPLY)
  if prior then return cjson.decode(prior) end
  local run_id = ARGV[1]
  local run = load_run(run_id)
  if not run then return {NOT_FOUND} end
  if run.status == 'queued' then
    redis.call('LREM', K_QUEUE, 0, run_id)
    finish_run(run_id, 'cancelled', 'cancelled by request', now_us())
    return answer({CANCELLED})
  end
  if run.status == 'running' then
    request_stop(run_id, 'cancelled')
    return answer({CANCEL_REQUESTED})
  end
  return answer({TERMINAL, run.status})
end
"""
)

# KEYS: SessionKeys.all, then KEYS[8] this request's reply key
# Returns {NOT_FOUND} for a session that does not exist; else {OK, run ids...}: the runs
#   cancelled or asked to stop (the active one last).
STOP = (
    _ANSWER
    + """
local function main()
  local prior = redis.call('GET', K_REPLY)
  if prior then return cjson.decode(prior) end
  if redis.call('EXISTS', K_STATE) == 0 then return {NOT_FOUND} end
  local cancelled = cancel_queue('session stopped', now_us())
  local active = redis.call('HGET', K_STATE, 'active_run') or ''
  if active ~= '' and request_stop(active, 'cancelled') then table.insert(cancelled, active) end
  return answer(append({OK}, cancelled))
end
"""
)

# KEYS: SessionKeys.all, then KEYS[8] this request's reply key
# Returns {NOT_FOUND} for a session that does not exist; else {OK, generation, run ids...}
RESET = (
    _ANSWER
    + """
local function main()
  local prior = redis.call('GET', K_REPLY)
  if prior then return cjson.decode(prior) end
  if redis.call('EXISTS', K_STATE) == 0 then return {NOT_FOUND} end
  local now = now_us()
  local cancelled = cancel_queue('session reset', now)
  local active = redis.call('HGET', K_STATE, 'active_run') or ''
  if active ~= '' and finish_run(active, 'cancelled', 'session reset', now) then
    signal_holder(active, 'reset')
    table.insert(cancelled, active)
  end
  redis.call('DEL', K_LEASE, K_TRANSCRIPT)
  redis.call('HINCRBY', K_STATE, 'fence', 1)
  local generation = redis.call('HINCRBY', K_STATE, 'generation', 1)
  if generation == 1 then generation = redis.call('HINCRBY', K_STATE, 'generation', 1) end
  redis.call('HSET', K_STATE, 'active_run', '')
  clear_stop()
  retain()
  emit('reset', '', tostring(generation))
  return answer(append({OK, generation}, cancelled))
end
"""
)


class Control:
    def __init__(self, redis: Redis, limits: Limits) -> None:
        self._redis = redis
        self._cancel = Script(redis, CANCEL, limits, name="cancel")
        self._stop = Script(redis, STOP, limits, name="stop")
        self._reset = Script(redis, RESET, limits, name="reset")

    @property
    def scripts(self) -> list[Script]:
        return [self._cancel, self._stop, self._reset]

    async def cancel(self, session: SessionRef, run_id: str, key: str | None = None) -> bool:
        """Cancel a run. True when it is cancelled now, False when its holder was asked to stop."""
        reply = await self._cancel(_with_reply(session, "cancel", key), [run_id])
        code = Code(reply[0])
        if code == Code.NOT_FOUND:
            raise RunNotFoundError(run_id)
        if code == Code.TERMINAL:
            raise RunTerminalError(run_id, as_text(reply[1]))
        return code == Code.CANCELLED

    async def stop(self, session: SessionRef, key: str | None = None) -> list[str]:
        reply = await self._stop(_with_reply(session, "stop", key), [])
        if Code(reply[0]) == Code.NOT_FOUND:
            raise SessionNotFoundError(session.session_id)
        return [as_text(run_id) for run_id in reply[1:]]

    async def reset(self, session: SessionRef, key: str | None = None) -> tuple[int, list[str]]:
        reply = await self._reset(_with_reply(session, "reset", key), [])
        if Code(reply[0]) == Code.NOT_FOUND:
            raise SessionNotFoundError(session.session_id)
        return int(reply[1]), [as_text(run_id) for run_id in reply[2:]]

    async def wake(self, session: SessionRef) -> None:
        """Ask any worker to take `session` over (it was released with runs queued)."""
        payload = json.dumps({"tenant": session.tenant, "session_id": session.session_id})
        await guarded(self._redis.publish(WAKE_CHANNEL, payload))


def _with_reply(session: SessionRef, action: str, key: str | None) -> list[str]:
    """The session's keys and the request's reply key: the same for a re-send, which
    redis-py makes with the same arguments, and for a caller's retry with the same key."""
    if key is None:
        request_id = secrets.token_urlsafe(12)
    else:
        request_id = hashlib.sha256(f"{action}:{key}".encode()).hexdigest()[:32]
    return [*session.keys.all, session.keys.reply(request_id)]
