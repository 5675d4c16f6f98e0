"""What a run waiting for capacity is waiting for, where run reads find it.

The mark is the field `<run_id>:w` of the session's run records (`SessionKeys.runs`):
`GET /v1/runs/{id}` and the session view read it with the run, at no extra round trip,
and show the run `queued` with `waiting_for` while it is there and the run is not over.
"""

from __future__ import annotations

from redis.asyncio import Redis

from app.locks import scripts
from app.sessions.ref import SessionRef

# KEYS[1] the session's run records (hash)
# ARGV[1] run id, ARGV[2] what it waits for ('' clears the mark)
# Returns 1 after setting or clearing the mark, 0 when the run has no record (its session
# was deleted or reset meanwhile): nothing is written, so a late mark cannot bring back a
# deleted session's records. Setting or clearing twice gives the same state (re-send safe).
MARK = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1] .. ':w')
else
  redis.call('HSET', KEYS[1], ARGV[1] .. ':w', ARGV[2])
end
return 1
"""

MARK_SUFFIX = ":w"


class WaitingMarks:
    def __init__(self, redis: Redis) -> None:
        self.script = redis.register_script(MARK)

    async def mark(self, tenant: str, session_id: str, run_id: str, waiting_for: str) -> None:
        keys = SessionRef.of(tenant, session_id).keys
        await scripts.call(self.script, [keys.runs], [run_id, waiting_for])
