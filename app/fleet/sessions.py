"""Sessions as operators list them: from the index of sessions with work, paged, pipelined.

The index (`ACTIVE_SESSIONS`) scores each session by its last admission. Listings walk it
oldest admission first with a cursor naming the last entry seen (its score and member), so
a session admitted again while an operator pages moves behind the cursor and shows up
again rather than being skipped. Each session's state is read with plain commands, all
sessions of a page in one pipeline (a cluster pipeline splits it by node).
"""

from __future__ import annotations

import base64
import binascii
import math
import time
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis

from app.errors import InvalidKeyError
from app.keys import ACTIVE_SESSIONS
from app.redis import as_text, guarded
from app.sessions.lua import decode_run_pair
from app.sessions.models import Holder, Run
from app.sessions.ref import SessionRef

SCAN_BUDGET = 5000
"""Index entries one page reads at most, however few of them match its filters."""
STATE_FIELDS = ["generation", "active_run", "holder", "fence", "held_since"]


@dataclass(frozen=True, slots=True)
class Entry:
    """One index entry: a session and the time (ms) of its last admission."""

    session: SessionRef
    score: float


@dataclass(frozen=True, slots=True)
class Page:
    sessions: list[dict[str, Any]]
    next_cursor: str | None


def encode_cursor(entry: Entry) -> str:
    raw = f"{entry.score!r}/{entry.session.member}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        score, _, member = raw.partition("/")
        if not member or not math.isfinite(float(score)):
            raise ValueError(member)
        return float(score), member
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidKeyError(cursor[:100], "not a cursor this listing gave") from None


class SessionListing:
    def __init__(self, redis: Redis, *, timeout: float | None = None) -> None:
        self._redis = redis
        self._timeout = timeout

    async def page(
        self, *, busy_only: bool, tenant: str | None, cursor: str | None, limit: int
    ) -> Page:
        """Up to `limit` sessions after `cursor`; `next_cursor` is None at the index's end."""
        after = decode_cursor(cursor) if cursor is not None else None
        found: list[dict[str, Any]] = []
        scanned = 0
        chunk_size = max(limit, 100)
        last: Entry | None = None
        while scanned < SCAN_BUDGET or last is None:
            chunk = await self._entries(after, chunk_size)
            if not chunk:
                return Page(found, None)
            scanned += len(chunk)
            wanted = [e for e in chunk if tenant is None or e.session.tenant == tenant]
            views = await self.views([e.session for e in wanted])
            by_member = {e.session.member: v for e, v in zip(wanted, views, strict=True)}
            for entry in chunk:
                view = by_member.get(entry.session.member)
                if view is not None and (view["busy"] or not busy_only):
                    found.append(view)
                    if len(found) == limit:
                        return Page(found, encode_cursor(entry))
            last = chunk[-1]
            after = (last.score, last.session.member)
            if len(chunk) < chunk_size:
                return Page(found, None)
        return Page(found, encode_cursor(last))

    async def both_ends(self, count: int) -> list[Entry]:
        """The `count` sessions admitted last (newest first), then the `count` admitted
        first: the index drops sessions idle for a while, so its oldest entries are the
        sessions busy longest, and its newest the ones that just had work."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zrevrange(ACTIVE_SESSIONS, 0, count - 1, withscores=True)
            pipe.zrange(ACTIVE_SESSIONS, 0, count - 1, withscores=True)
            newest, oldest = await guarded(pipe.execute(), self._timeout)
        unique: dict[str, Entry] = {}
        for entry in _entries(cast(list[tuple[bytes, float]], [*newest, *oldest])):
            unique.setdefault(entry.session.member, entry)
        return list(unique.values())

    async def views(self, sessions: list[SessionRef]) -> list[dict[str, Any] | None]:
        """Each session's holder, active run and queue (None: the session is gone); two
        round trips for all of them."""
        if not sessions:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for session in sessions:
                pipe.pttl(session.keys.lease.lease)
                pipe.hmget(session.keys.state, STATE_FIELDS)
                pipe.lrange(session.keys.queue, 0, -1)
            replies = await guarded(pipe.execute(), self._timeout)
        now_us = time.time() * 1_000_000
        states = [replies[i : i + 3] for i in range(0, len(replies), 3)]
        actives = await self._runs(
            [
                (session, as_text(state[1]))
                for session, (_, state, _) in zip(sessions, states, strict=True)
                if state[1]
            ]
        )
        views: list[dict[str, Any] | None] = []
        for session, (pttl, state, queue) in zip(sessions, states, strict=True):
            generation, active_id, holder, fence, held_since = (
                as_text(v) if v is not None else None for v in state
            )
            if generation is None:
                views.append(None)
                continue
            active = actives.get(active_id) if active_id else None
            holding = (
                Holder(holder or "", int(fence or 0), pttl, int(held_since) if held_since else None)
                if pttl > 0
                else None
            )
            queued = [as_text(q) for q in queue]
            views.append(
                {
                    "tenant": session.tenant,
                    "session_id": session.session_id,
                    "busy": holding is not None or active is not None or bool(queued),
                    "holder": holding.public() if holding else None,
                    "active_run": _active(active, now_us) if active else None,
                    "queued": queued,
                }
            )
        return views

    async def recent_runs(self, sessions: list[SessionRef], per_session: int) -> list[Run]:
        """The last `per_session` runs admitted in each session (two round trips)."""
        if not sessions:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for session in sessions:
                pipe.zrevrange(session.keys.order, 0, per_session - 1)
            orders = await guarded(pipe.execute(), self._timeout)
        wanted = [
            (session, as_text(run_id))
            for session, run_ids in zip(sessions, orders, strict=True)
            for run_id in run_ids
        ]
        return list((await self._runs(wanted)).values())

    async def _runs(self, wanted: list[tuple[SessionRef, str]]) -> dict[str, Run]:
        if not wanted:
            return {}
        async with self._redis.pipeline(transaction=False) as pipe:
            for session, run_id in wanted:
                pipe.hmget(session.keys.runs, [run_id, f"{run_id}:s"])
            pairs = await guarded(pipe.execute(), self._timeout)
        return {
            run_id: Run.from_record(decode_run_pair(asked, state))
            for (_, run_id), (asked, state) in zip(wanted, pairs, strict=True)
            if asked and state
        }

    async def _entries(self, after: tuple[float, str] | None, count: int) -> list[Entry]:
        if after is None:
            raw = await guarded(
                self._redis.zrange(ACTIVE_SESSIONS, 0, count - 1, withscores=True), self._timeout
            )
            return _entries(cast(list[tuple[bytes, float]], raw))
        score, member = after
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zrangebyscore(ACTIVE_SESSIONS, score, score, withscores=True)
            pipe.zrangebyscore(
                ACTIVE_SESSIONS, f"({score!r}", "+inf", start=0, num=count, withscores=True
            )
            ties, rest = await guarded(pipe.execute(), self._timeout)
        # Redis orders equal scores by member, bytewise: those after the cursor's come next.
        later = [(m, s) for m, s in ties if as_text(m).encode() > member.encode()]
        return _entries([*later, *rest][:count])


def _active(run: Run, now_us: float) -> dict[str, Any]:
    since = run.started_at or run.created_at
    return {
        "run_id": run.run_id,
        "status": run.status.value,
        "started_at": run.public()["started_at"],
        "age_ms": max(0, round((now_us - since) / 1000)) if since else None,
    }


def _split(member: str) -> tuple[str, str]:
    tenant, _, session_id = member.partition("/")
    return tenant, session_id


def _entries(raw: list[tuple[bytes, float]]) -> list[Entry]:
    entries = []
    for member, score in raw:
        try:
            entries.append(Entry(SessionRef.of(*_split(as_text(member))), float(score)))
        except InvalidKeyError:
            continue  # not a session member (the sweeper drops such entries)
    return entries
