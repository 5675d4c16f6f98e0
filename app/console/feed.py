"""What the console's event stream sends: a snapshot of the server every interval, and a
notice for each run that ended since the last one.

Each connection has its own feed, which remembers what it has announced. A run that ended
is found by reading the last runs of the sessions that may have just ended one: those
busy in this or the previous snapshot, and those admitted since the previous one (a run
can start and end between two snapshots). Runs per second come from the worker registry
(each worker counts the runs it ended), so the figure covers every worker, not only the
one serving the stream.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from app.fleet.sessions import Entry, SessionListing
from app.sessions.models import Run

SCANNED_SESSIONS = 250
"""A snapshot reads this many sessions at each end of the index (admitted last, and first:
busy longest), and shows the busy ones; GET /internal/sessions pages through them all."""
SHOWN_SESSIONS = 200
RECENT_RUNS = 50
RUNS_PER_SESSION = 5
SEED_SESSIONS = 20
AGENT_EVENTS = 20
ANNOUNCED_KEPT = 10_000
ADMISSION_MARGIN_MS = 2000
"""Admission times are each worker's clock: look a little further back than the last tick."""

Workers = Callable[[], Awaitable[list[dict[str, Any]]]]
Agents = Callable[[], Awaitable[list[dict[str, Any]]]]
AgentEvents = Callable[[int], Awaitable[list[dict[str, Any]]]]


class ConsoleFeed:
    def __init__(
        self,
        listing: SessionListing,
        workers: Workers,
        agents: Agents,
        agent_events: AgentEvents,
        *,
        tenant: str | None,
    ) -> None:
        self._listing = listing
        self._workers = workers
        self._agents = agents
        self._agent_events = agent_events
        self._tenant = tenant
        self._busy: set[str] = set()
        self._last_tick_ms: float | None = None
        self._announced: OrderedDict[str, None] = OrderedDict()
        self._recent: deque[dict[str, Any]] = deque(maxlen=RECENT_RUNS)

    async def tick(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The snapshot now, and the runs that ended since the last tick (oldest first)."""
        now_ms = time.time() * 1000
        entries = [
            e
            for e in await self._listing.both_ends(SCANNED_SESSIONS)
            if self._tenant is None or e.session.tenant == self._tenant
        ]
        views = await self._listing.views([e.session for e in entries])
        present = [v for v in views if v is not None]
        busy = [v for v in present if v["busy"]]
        ended = await self._ended(entries, {f"{v['tenant']}/{v['session_id']}" for v in busy})
        self._last_tick_ms = now_ms
        workers = await self._workers()
        snapshot = {
            "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "tenant": self._tenant,
            "sessions": sorted(busy, key=lambda v: (v["tenant"], v["session_id"]))[:SHOWN_SESSIONS],
            "recent_runs": list(self._recent),
            "workers": workers,
            "agents": await self._agents(),
            "agent_events": await self._agent_events(AGENT_EVENTS),
            "counters": {
                "busy_sessions": len(busy),
                "queue_depth": sum(len(v["queued"]) for v in present),
                "running": sum(1 for v in busy if v["active_run"] is not None),
                "workers": len(workers),
                "runs_per_second": round(sum(w["runs_per_second"] for w in workers), 3),
                "runs_finished": sum(w["runs_finished"] for w in workers),
            },
        }
        return snapshot, ended

    async def _ended(self, entries: list[Entry], busy_now: set[str]) -> list[dict[str, Any]]:
        first = self._last_tick_ms is None
        if first:
            watched = entries[:SEED_SESSIONS]
        else:
            since = (self._last_tick_ms or 0) - ADMISSION_MARGIN_MS
            watch = self._busy | busy_now
            watched = [e for e in entries if e.session.member in watch or e.score >= since]
        self._busy = busy_now
        runs = await self._listing.recent_runs([e.session for e in watched], RUNS_PER_SESSION)
        fresh = [run for run in runs if run.status.terminal and run.run_id not in self._announced]
        fresh.sort(key=lambda run: run.finished_at or 0)
        for run in fresh:
            self._announced[run.run_id] = None
            self._recent.appendleft(summary(run))
        while len(self._announced) > ANNOUNCED_KEPT:
            self._announced.popitem(last=False)
        return [] if first else [summary(run) for run in fresh]


def summary(run: Run) -> dict[str, Any]:
    """A run as the console lists it."""
    public = run.public()
    duration = None
    if run.started_at and run.finished_at:
        duration = max(0, round((run.finished_at - run.started_at) / 1000))
    return {
        "run_id": run.run_id,
        "tenant": run.tenant,
        "session_id": run.session_id,
        "status": run.status.value,
        "agent_id": run.agent_id,
        "worker": run.worker,
        "created_at": public["created_at"],
        "started_at": public["started_at"],
        "finished_at": public["finished_at"],
        "duration_ms": duration,
        "reason": run.reason,
        "error": run.error,
    }
