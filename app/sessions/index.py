"""The index of sessions with work, and taking over a session whose holder is gone.

Admission adds a session to the index (`ACTIVE_SESSIONS`, scored by the last admission)
before the admission itself, so a session that has work is always indexed. The sweeper
walks it: RECOVER takes over a session whose lease expired while it still had a run
marked running or runs queued; FORGET drops an idle session unless it was admitted again
since its score was read.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from app.errors import InvalidKeyError
from app.keys import ACTIVE_SESSIONS
from app.redis import as_text, guarded, is_cluster
from app.sessions.lua import Code, Limits, Script, decode_run_pair
from app.sessions.models import Run, StartedHold
from app.sessions.ref import SessionRef

# KEYS: SessionKeys.all
# ARGV[1] token, ARGV[2] worker
# A queued run past its start deadline ends `expired` here too (a holder may be busy for
# long with the run before it).
# Returns {BUSY} while a holder has the lease; {IDLE} with nothing to do;
#   {STARTED, 0, first run's two fields} when the caller now holds the session (also to a
#   re-send of a call that took it: the lease holds this call's token); the first run may
#   be a collect run still collecting, which the caller waits for (status queued).
RECOVER = """
local function main()
  local holder = redis.call('GET', K_LEASE)
  if holder == ARGV[1] then
    local state = redis.call('HMGET', K_STATE, 'active_run', 'waiting')
    local first = (state[1] or '') ~= '' and state[1] or state[2] or ''
    if first ~= '' then return append({STARTED, 0}, flat_next(first, load_run(first), now_us())) end
  end
  if holder then
    expire_queue()
    return {BUSY}
  end
  local active = redis.call('HGET', K_STATE, 'active_run') or ''
  if active == '' and redis.call('LLEN', K_QUEUE) == 0 then return {IDLE} end
  redis.call('SET', K_LEASE, ARGV[1], 'PX', LEASE_TTL_MS)
  local now = now_us()
  redis.call('HSET', K_STATE, 'holder', ARGV[2], 'held_since', now)
  settle_orphan(now, active)
  local first_id, first = pop_next(now, ARGV[2], true)
  if not first_id then
    redis.call('DEL', K_LEASE)
    return {IDLE}
  end
  retain()
  return append({STARTED, 0}, flat_next(first_id, first, now))
end
"""

# Not a session script: the index is one key of its own.
# KEYS[1] index; ARGV[1] member, ARGV[2] the score read
# Returns 1 when removed.
FORGET = """
local function main()
  local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
  if score and tonumber(score) == tonumber(ARGV[2]) then
    return redis.call('ZREM', KEYS[1], ARGV[1])
  end
  return 0
end
"""


class SessionIndex:
    def __init__(self, redis: Redis, limits: Limits, *, worker: str) -> None:
        self._redis = redis
        self._timeout = limits.call_timeout
        self._recover = Script(redis, RECOVER, limits, name="recover")
        self._forget = Script(redis, FORGET, limits, name="forget")
        self._worker = worker

    @property
    def scripts(self) -> list[Script]:
        return [self._recover, self._forget]

    async def recover(self, sessions: list[SessionRef]) -> list[StartedHold | bool | None]:
        """Take over sessions whose holder is gone but whose work is not: for each, the
        hold when this worker now holds it, True while another holder has it, None when
        it has nothing to do. One round trip where the topology allows."""
        tokens = [secrets.token_hex(16) for _ in sessions]
        sent = asyncio.get_running_loop().time()
        calls = [(s.keys.all, [t, self._worker]) for s, t in zip(sessions, tokens, strict=True)]
        replies = await self._many(self._recover, calls)
        outcomes: list[StartedHold | bool | None] = []
        for token, reply in zip(tokens, replies, strict=True):
            code = Code(reply[0])
            if code == Code.BUSY:
                outcomes.append(True)
            elif code == Code.IDLE:
                outcomes.append(None)
            else:
                first = Run.from_record(decode_run_pair(reply[2], reply[3]))
                outcomes.append(StartedHold(token, sent, first))
        return outcomes

    async def page(self, offset: int, count: int) -> list[tuple[SessionRef, float]]:
        """Indexed sessions, least recently admitted first, from rank `offset`."""
        entries = cast(
            list[tuple[bytes, float]],
            await guarded(
                self._redis.zrange(ACTIVE_SESSIONS, offset, offset + count - 1, withscores=True)
            ),
        )
        found = []
        for member, score in entries:
            tenant, _, session_id = as_text(member).partition("/")
            try:
                found.append((SessionRef.of(tenant, session_id), score))
            except InvalidKeyError:
                await guarded(self._redis.zrem(ACTIVE_SESSIONS, member))
        return found

    async def forget(
        self, entries: list[tuple[SessionRef, float]], index: str = ACTIVE_SESSIONS
    ) -> int:
        """Drop idle sessions from an index, each unless admitted since its `score`."""
        calls = [([index], [s.member, repr(score)]) for s, score in entries]
        if not calls:
            return 0
        return sum(int(r) for r in await self._many(self._forget, calls))

    async def _many(self, script: Script, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """Run one script many times, in one round trip on a single server (a cluster
        pipelines no scripts across slots: one call each there)."""
        if is_cluster(self._redis) or len(calls) == 1:
            return [await script(keys, args) for keys, args in calls]
        async with self._redis.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            replies: list[Any] = await guarded(pipe.execute(raise_on_error=False), self._timeout)
        if any(isinstance(r, NoScriptError) for r in replies):
            await guarded(self._redis.script_load(script.script))
            return await self._many(script, calls)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies
