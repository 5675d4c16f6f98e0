"""Reading sessions and runs: plain commands, no script, one round trip each."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable
from typing import Any, TypeVar, cast

from redis.asyncio import Redis

from app.agents import Turn
from app.errors import RunNotFoundError, SessionNotFoundError
from app.redis import as_text, guarded
from app.sessions.ids import locate_run
from app.sessions.lua import decode_run_pair
from app.sessions.models import Holder, Run, SessionView
from app.sessions.ref import SessionRef

T = TypeVar("T")


class Reads:
    def __init__(
        self, redis: Redis, *, timeout: float | None = None, default_policy: str = "enqueue"
    ) -> None:
        self._redis = redis
        self._timeout = timeout
        self._default_policy = default_policy

    async def _call(self, awaitable: Awaitable[T]) -> T:
        return await guarded(awaitable, self._timeout)

    def locate(self, run_id: str, tenant: str) -> SessionRef:
        """The session of a run id, if it belongs to `tenant` (else RunNotFoundError)."""
        run_tenant, session_id = locate_run(run_id)
        if run_tenant != tenant:
            raise RunNotFoundError(run_id)
        return SessionRef.of(run_tenant, session_id)

    async def get_run(self, session: SessionRef, run_id: str) -> Run:
        asked, state, waiting = await self._call(
            self._redis.hmget(session.keys.runs, [run_id, f"{run_id}:s", f"{run_id}:w"])
        )
        if asked is None or state is None:
            raise RunNotFoundError(run_id)
        return Run.from_record(_with_waiting(decode_run_pair(asked, state), waiting))

    async def find_by_idempotency_key(self, session: SessionRef, key: str) -> Run:
        digest = hashlib.sha256(key.encode()).hexdigest()[:32]
        run_id = await self._call(self._redis.hget(session.keys.runs, f"idem:{digest}"))
        if run_id is None:
            raise RunNotFoundError(key)
        return await self.get_run(session, as_text(run_id))

    async def view(self, session: SessionRef) -> SessionView:
        """The session as it stands: holder, active run, queue, last error (2 round trips)."""
        keys = session.keys
        fields = [
            "generation",
            "active_run",
            "holder",
            "fence",
            "held_since",
            "last_error",
            "default_policy",
            "agent_state",
            "default_collect_ms",
        ]
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.pttl(keys.lease.lease)
            pipe.hmget(keys.state, fields)
            pipe.lrange(keys.queue, 0, -1)
            pttl, state, queued = await self._call(pipe.execute())
        (
            generation,
            active_id,
            holder,
            fence,
            held_since,
            last_error,
            default,
            agent_state,
            collect_ms,
        ) = (as_text(v) if v is not None else None for v in state)
        if generation is None:
            raise SessionNotFoundError(session.session_id)
        ids = [active_id] if active_id else []
        ids += [as_text(q) for q in queued]
        runs = await self._runs(session, ids)
        active = runs.pop(0) if active_id and runs and runs[0].run_id == active_id else None
        return SessionView(
            session_id=session.session_id,
            holder=Holder(
                holder or "", int(fence or 0), pttl, int(held_since) if held_since else None
            )
            if pttl > 0
            else None,
            active_run=active,
            queued=runs,
            generation=int(generation),
            last_error=last_error or None,
            default_busy_policy=default or self._default_policy,
            agent_state=json.loads(agent_state) if agent_state else {},
            default_collect_ms=int(collect_ms) if collect_ms else None,
        )

    async def _runs(self, session: SessionRef, run_ids: list[str]) -> list[Run]:
        """The runs that exist of `run_ids`, in that order (one round trip)."""
        if not run_ids:
            return []
        fields = [f for run_id in run_ids for f in (run_id, f"{run_id}:s", f"{run_id}:w")]
        values = await self._call(self._redis.hmget(session.keys.runs, fields))
        triples = zip(values[0::3], values[1::3], values[2::3], strict=True)
        records = [_with_waiting(decode_run_pair(a, s), w) for a, s, w in triples if a and s]
        return [Run.from_record(record) for record in records]

    async def require(self, session: SessionRef) -> None:
        if not await self._call(self._redis.exists(session.keys.state)):
            raise SessionNotFoundError(session.session_id)

    async def list_runs(self, session: SessionRef, offset: int, limit: int) -> list[Run]:
        keys = session.keys
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.exists(keys.state)
            pipe.zrevrange(keys.order, offset, offset + limit - 1)
            exists, run_ids = await self._call(pipe.execute())
        if not exists:
            raise SessionNotFoundError(session.session_id)
        return await self._runs(session, [as_text(r) for r in run_ids])

    async def transcript(self, session: SessionRef) -> tuple[int, list[dict[str, Any]]]:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hget(session.keys.state, "generation")
            pipe.lrange(session.keys.transcript, 0, -1)
            generation, turns = await self._call(pipe.execute())
        if generation is None:
            raise SessionNotFoundError(session.session_id)
        return int(generation), [json.loads(turn) for turn in turns]

    async def history(self, session: SessionRef) -> list[Turn]:
        """The current generation's conversation, oldest first, for an agent."""
        turns = await self._call(self._redis.lrange(session.keys.transcript, 0, -1))
        return [Turn(**json.loads(turn)) for turn in turns]

    async def agent_state(self, session: SessionRef) -> dict[str, Any]:
        """The session's agent state as its agent last left it (`{}` at first)."""
        raw = await self._call(self._redis.hget(session.keys.state, "agent_state"))
        state = json.loads(raw) if raw else {}
        return state if isinstance(state, dict) else {}

    async def events_after(
        self, session: SessionRef, after: str | None, count: int
    ) -> list[tuple[str, dict[str, str]]]:
        """Entries of the session's event stream after id `after` (all, if None)."""
        start = f"({after}" if after else "-"
        entries = cast(
            list[tuple[bytes, dict[bytes, bytes]]],
            await self._call(self._redis.xrange(session.keys.events, start, "+", count=count)),
        )
        return [(as_text(i), {as_text(k): as_text(v) for k, v in f.items()}) for i, f in entries]

    async def last_event_id(self, session: SessionRef) -> str:
        entries = await self._call(self._redis.xrevrange(session.keys.events, count=1))
        return as_text(entries[0][0]) if entries else "0-0"


def _with_waiting(record: dict[str, Any], waiting: Any) -> dict[str, Any]:
    """The record with what the run waits for (app/capacity/marks.py), if it waits."""
    if waiting:
        record["waiting_for"] = as_text(waiting)
    return record
