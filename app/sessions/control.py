"""Cancel, stop and reset, from any worker; and waking a worker to take a session over.

A queued run is cancelled in the script itself; a running one is asked to stop: the
request is written to the session's state (the holder's renewal reads it) and published
(the holder hears it at once). Reset also frees the session and moves its fence and
generation on, in the same script, so whatever the old holder writes afterwards is refused.

Each call carries a request id; its answer is kept briefly (REPLY_TTL_MS) under that id
(KEYS[10]), so a re-sent call (its reply was lost) gets the same answer and changes nothing
twice. A caller's Idempotency-Key becomes the request id, so a client retrying a reset
after a timeout does not reset twice either.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass

from redis.asyncio import Redis

from app.errors import RunNotFoundError, RunTerminalError, SessionNotFoundError
from app.keys import WAKE_CHANNEL
from app.redis import as_text, guarded
from app.sessions.lua import Code, Limits, Script
from app.sessions.ref import SessionRef

_ANSWER = """
local K_REPLY = KEYS[10]

local function answer(result)
  redis.call('SET', K_REPLY, cjson.encode(result), 'PX', REPLY_TTL_MS)
  return result
end

local function cancel_queue(error, now, reason)
  local cancelled = {}
  for _, run_id in ipairs(redis.call('LRANGE', K_QUEUE, 0, -1)) do
    if finish_run(run_id, 'cancelled', error, now, reason) then
      table.insert(cancelled, run_id)
    end
  end
  redis.call('DEL', K_QUEUE)
  return cancelled
end

-- End the active run here (its holder's writes are refused from now on, the fence moves
-- past them) and tell the holder to stop without writing.
local function end_active(error, now, reason)
  local active = redis.call('HGET', K_STATE, 'active_run') or ''
  if active ~= '' and finish_run(active, 'cancelled', error, now, reason) then
    signal_holder(active, 'reset:' .. reason)
    return active
  end
  return nil
end

-- End every run of the session: the queued ones, then the active one.
local function end_all(error, now, reason)
  local ended = cancel_queue(error, now, reason)
  local active = end_active(error, now, reason)
  if active then table.insert(ended, active) end
  return ended
end
"""

# KEYS: SessionKeys.all, then KEYS[10] this request's reply key
# ARGV[1] run id, ARGV[2] reason recorded on the run (api, client_disconnected)
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
    finish_run(run_id, 'cancelled', 'cancelled by request', now_us(), ARGV[2])
    wake_waiting()
    return answer({CANCELLED})
  end
  if run.status == 'running' then
    request_stop(run_id, 'cancelled', ARGV[2])
    return answer({CANCEL_REQUESTED})
  end
  return answer({TERMINAL, run.status})
end
"""
)

# KEYS: SessionKeys.all, then KEYS[10] this request's reply key
# ARGV[1] 'cancel' to cancel the queued runs too, 'keep' to let them run
# Returns {NOT_FOUND} for a session that does not exist; else {OK, how many were stopped,
#   the runs cancelled or asked to stop (the active one last)..., the runs kept...}
STOP = (
    _ANSWER
    + """
local function main()
  local prior = redis.call('GET', K_REPLY)
  if prior then return cjson.decode(prior) end
  if redis.call('EXISTS', K_STATE) == 0 then return {NOT_FOUND} end
  local cancelled, kept = {}, {}
  if ARGV[1] == 'keep' then
    kept = redis.call('LRANGE', K_QUEUE, 0, -1)
  else
    cancelled = cancel_queue('session stopped', now_us(), 'stop')
    wake_waiting()
  end
  local active = redis.call('HGET', K_STATE, 'active_run') or ''
  if active ~= '' and request_stop(active, 'cancelled', 'stop') then
    table.insert(cancelled, active)
  end
  return answer(append(append({OK, #cancelled}, cancelled), kept))
end
"""
)

# KEYS: SessionKeys.all, then KEYS[10] this request's reply key
# Returns {NOT_FOUND} for a session that does not exist; else {OK, generation, run ids...}
RESET = (
    _ANSWER
    + """
local function main()
  local prior = redis.call('GET', K_REPLY)
  if prior then return cjson.decode(prior) end
  if redis.call('EXISTS', K_STATE) == 0 then return {NOT_FOUND} end
  local now = now_us()
  local cancelled = end_all('session reset', now, 'reset')
  wake_waiting()
  redis.call('DEL', K_LEASE, K_TRANSCRIPT)
  redis.call('HINCRBY', K_STATE, 'fence', 1)
  local generation = redis.call('HINCRBY', K_STATE, 'generation', 1)
  if generation == 1 then generation = redis.call('HINCRBY', K_STATE, 'generation', 1) end
  redis.call('HSET', K_STATE, 'active_run', '', 'waiting', '')
  redis.call('HDEL', K_STATE, 'agent_state')  -- a new conversation: the agent starts afresh
  clear_stop()
  retain()
  emit('reset', '', tostring(generation))
  return answer(append({OK, generation}, cancelled))
end
"""
)

# Erase a session: stop everything, then delete all its keys (its runs, transcript and
# events included). Its old holder's writes are refused: its token no longer holds a lease.
# KEYS: SessionKeys.all, then KEYS[10] this request's reply key
# Returns {NOT_FOUND} for a session that does not exist; else {OK, run ids stopped...}
DELETE = (
    _ANSWER
    + """
local function main()
  local prior = redis.call('GET', K_REPLY)
  if prior then return cjson.decode(prior) end
  if redis.call('EXISTS', K_STATE) == 0 then return {NOT_FOUND} end
  local now = now_us()
  local cancelled = end_all('session deleted', now, 'deleted')
  wake_waiting()
  redis.call('DEL', K_LEASE, K_STATE, K_QUEUE, K_RUNS, K_ORDER, K_TRANSCRIPT, K_EVENTS,
             K_OUTBOX, K_OUTBOX_DUE)
  last_event = nil  -- nothing to announce on a stream that is gone
  return answer(append({OK}, cancelled))
end
"""
)


# KEYS: SessionKeys.all
# ARGV[1] the session's default busy policy ('' to leave it), ARGV[2] its default
#   collect_ms ('' to leave it)
# Returns {NOT_FOUND} for a session that does not exist; else {OK}
DEFAULTS = """
local function main()
  if redis.call('EXISTS', K_STATE) == 0 then return {NOT_FOUND} end
  if ARGV[1] ~= '' then redis.call('HSET', K_STATE, 'default_policy', ARGV[1]) end
  if ARGV[2] ~= '' then redis.call('HSET', K_STATE, 'default_collect_ms', ARGV[2]) end
  return {OK}
end
"""


@dataclass(frozen=True, slots=True)
class Stopped:
    cancelled: list[str]
    """The runs cancelled, and the active one asked to stop (last)."""
    kept: list[str]
    """The queued runs left to run (`queued=keep`)."""


class Control:
    def __init__(self, redis: Redis, limits: Limits) -> None:
        self._redis = redis
        self._cancel = Script(redis, CANCEL, limits, name="cancel")
        self._stop = Script(redis, STOP, limits, name="stop")
        self._reset = Script(redis, RESET, limits, name="reset")
        self._delete = Script(redis, DELETE, limits, name="delete")
        self._defaults = Script(redis, DEFAULTS, limits, name="defaults")

    @property
    def scripts(self) -> list[Script]:
        return [self._cancel, self._stop, self._reset, self._delete, self._defaults]

    async def set_defaults(
        self, session: SessionRef, policy: str | None, collect_ms: int | None = None
    ) -> None:
        """The session's default busy policy and collect_ms (None: left as they are)."""
        reply = await self._defaults(session.keys.all, [policy or "", collect_ms or ""])
        if Code(reply[0]) == Code.NOT_FOUND:
            raise SessionNotFoundError(session.session_id)

    async def cancel(
        self, session: SessionRef, run_id: str, key: str | None = None, reason: str = "api"
    ) -> bool:
        """Cancel a run. True when it is cancelled now, False when its holder was asked to stop."""
        reply = await self._cancel(_with_reply(session, "cancel", key), [run_id, reason])
        code = Code(reply[0])
        if code == Code.NOT_FOUND:
            raise RunNotFoundError(run_id)
        if code == Code.TERMINAL:
            raise RunTerminalError(run_id, as_text(reply[1]))
        return code == Code.CANCELLED

    async def stop(
        self, session: SessionRef, key: str | None = None, *, keep_queued: bool = False
    ) -> Stopped:
        mode = "keep" if keep_queued else "cancel"
        reply = await self._stop(_with_reply(session, f"stop-{mode}", key), [mode])
        if Code(reply[0]) == Code.NOT_FOUND:
            raise SessionNotFoundError(session.session_id)
        stopped = int(reply[1])
        runs = [as_text(run_id) for run_id in reply[2:]]
        return Stopped(cancelled=runs[:stopped], kept=runs[stopped:])

    async def delete(self, session: SessionRef, key: str | None = None) -> list[str]:
        """Stop everything and erase the session; the runs that were stopped."""
        reply = await self._delete(_with_reply(session, "delete", key), [])
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
