"""What a run waiting for capacity is waiting for, where run reads find it.

The mark is the field `<run_id>:w` of the session's run records (`SessionKeys.runs`):
`GET /v1/runs/{id}` and the session view read it with the run, at no extra round trip,
and show the run `queued` with `waiting_for` while it is there and the run is not over.

A run that waits before its agent is first called (`starting`) has not started: its
`started_at` is empty while it waits and set when its last wait ends, so `started_at`
tells when the agent got the run, not when its session's holder took it; a run that
expires or is cancelled while it waits never started.
"""

from __future__ import annotations

from redis.asyncio import Redis

from app.locks import scripts
from app.sessions.ref import SessionRef

# KEYS[1] the session's run records (hash)
# ARGV[1] run id, ARGV[2] what it waits for ('' clears the mark), ARGV[3] '1' when the
# run's agent was not called yet: setting the mark empties the running run's `started_at`
# (it has not started), clearing it sets `started_at` to now (its agent is called next)
# Returns 1 after setting or clearing the mark, 0 when the run has no record (its session
# was deleted or reset meanwhile): nothing is written, so a late mark cannot bring back a
# deleted session's records. Setting or clearing twice gives the same state: a re-sent
# clearing finds no mark and moves nothing (re-send safe).
MARK = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
local changed
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], ARGV[1] .. ':w', ARGV[2])
  changed = 1
else
  changed = redis.call('HDEL', KEYS[1], ARGV[1] .. ':w')
end
if changed == 1 and ARGV[3] == '1' then
  local raw = redis.call('HGET', KEYS[1], ARGV[1] .. ':s')
  local run = raw and cjson.decode(raw)
  if run and run.status == 'running' then
    if ARGV[2] ~= '' then
      run.started_at = ''
    else
      local t = redis.call('TIME')
      run.started_at = t[1] .. string.format('%06d', tonumber(t[2]))
    end
    redis.call('HSET', KEYS[1], ARGV[1] .. ':s', cjson.encode(run))
  end
end
return 1
"""

MARK_SUFFIX = ":w"


class WaitingMarks:
    def __init__(self, redis: Redis) -> None:
        self.script = redis.register_script(MARK)

    async def mark(
        self, tenant: str, session_id: str, run_id: str, waiting_for: str, *, starting: bool = False
    ) -> None:
        """Show `run_id` waiting for `waiting_for`, or ('') no longer waiting; `starting`:
        its agent was not called yet (see the module's docstring)."""
        keys = SessionRef.of(tenant, session_id).keys
        args = [run_id, waiting_for, "1" if starting else ""]
        await scripts.call(self.script, [keys.runs], args)
