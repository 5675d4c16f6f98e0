"""What a holder writes while a run goes on: its reply text and events, in numbered
batches, fenced like every holder write (app/sessions/writes.py writes the outcome).

A re-sent batch is answered as the first one was: EMIT keeps the number of the last batch
it wrote, and writes none twice.
"""

from __future__ import annotations

import json

from redis.asyncio import Redis

from app.errors import LeaseNotOwnedError
from app.locks import Lease
from app.sessions.deltas import Item
from app.sessions.lua import Code, Limits, Script
from app.sessions.ref import SessionRef

# KEYS: SessionKeys.all
# ARGV[1] token, ARGV[2] fence, ARGV[3] run id, ARGV[4] this write's batch number (1, 2...
#   in order), ARGV[5] its items: JSON [[kind, payload], ...], kind "delta" for reply text
#   (the payload the text), "$state" for the session's agent state as the run left it (kept
#   in the state, not an event), else a structured event's kind (its data as JSON)
# Tool calls and results are also kept with the run (`<run id>:t`), for the transcript.
# Returns {OK} (also when this batch was written already: a re-send) | {STALE}
EMIT = """
local TOOL_KINDS = {tool_call_start = true, tool_call_args = true, tool_call_result = true}

local function main()
  local run_id, batch = ARGV[3], tonumber(ARGV[4])
  local state = redis.call('HMGET', K_STATE, 'fence', 'sent', 'active_run', 'batch')
  if redis.call('GET', K_LEASE) ~= ARGV[1] or state[1] ~= ARGV[2] or state[3] ~= run_id then
    return {STALE}
  end
  if tonumber(state[4] or '0') >= batch then return {OK} end
  local sent, tools = tonumber(state[2] or '0'), {}
  local agent_state = nil
  for _, item in ipairs(cjson.decode(ARGV[5])) do
    if item[1] == '$state' then
      agent_state = item[2]
    else
      emit(item[1], run_id, item[2])
    end
    if item[1] == 'delta' then
      sent = sent + #item[2]
    elseif TOOL_KINDS[item[1]] then
      table.insert(tools, item)
    end
  end
  local fields = {'sent', sent, 'batch', batch, 'confirmed', run_id}
  if agent_state then append(fields, {'agent_state', agent_state}) end
  if #tools > 0 then
    local kept = redis.call('HGET', K_RUNS, run_id .. ':t')
    local all = kept and cjson.decode(kept) or {}
    for _, item in ipairs(tools) do table.insert(all, item) end
    redis.call('HSET', K_RUNS, run_id .. ':t', cjson.encode(all))
    append(fields, {'tools', run_id})
  end
  redis.call('HSET', K_STATE, unpack(fields))
  return {OK}
end
"""


class Emits:
    def __init__(self, redis: Redis, limits: Limits) -> None:
        self.script = Script(redis, EMIT, limits, name="emit")

    async def emit(
        self, session: SessionRef, lease: Lease, run_id: str, batch: int, items: list[Item]
    ) -> None:
        """Write batch `batch` of the run's reply text and events; refused for a stale fence."""
        reply = await self.script(
            session.keys.all, [lease.token, lease.fence, run_id, batch, json.dumps(items)]
        )
        if Code(reply[0]) == Code.STALE:
            raise LeaseNotOwnedError(lease.key)
