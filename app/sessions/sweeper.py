"""Recovery of sessions whose holder died: every worker runs a sweeper; one sweeps at a time.

Each interval, the worker that wins the sweep lease walks the index of sessions with work
(`index`): a session whose lease expired while it still had a run marked running or runs
queued is taken over (a run whose agent never confirmed a start is started again; one
that had started ends `lost`, or runs once more with LEASEGATE_RETRY_LOST_RUNS), and its
queue is drained here; a session with nothing to do is dropped from the index, unless it
was admitted again meanwhile or too recently to be sure its admission has landed.

Worst case from a SIGKILL to the take-over: the lease TTL plus one sweep interval.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

from app.errors import LeasegateError
from app.locks import LeaseManager
from app.metrics import Metrics
from app.sessions.index import SessionIndex
from app.sessions.models import StartedHold
from app.sessions.service import Sessions
from app.tasks import cancel_and_wait

log = logging.getLogger(__name__)

SWEEP_LEASE = "sweeper"
PAGE = 1000
MAX_PER_SWEEP = 20_000


class Sweeper:
    def __init__(
        self,
        index: SessionIndex,
        sessions: Sessions,
        leases: LeaseManager,
        metrics: Metrics,
        *,
        interval: float,
        idle_grace: float,
    ) -> None:
        self._index = index
        self._sessions = sessions
        self._leases = leases
        self._metrics = metrics
        self._interval = interval
        self._idle_grace_ms = idle_grace * 1000
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="session-sweeper")

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            await cancel_and_wait(self._task)

    async def _loop(self) -> None:
        while not self._closed:
            # A little jitter spreads the workers' attempts; the sweep lease lasts less than
            # the shortest pause, so some worker sweeps at least once every interval.
            await asyncio.sleep(self._interval * random.uniform(0.9, 1.0))
            try:
                await self.sweep()
            except LeasegateError as exc:
                log.warning("sweeper: %s", exc)
            except Exception:
                log.exception("sweeper: unexpected failure")

    async def sweep(self) -> int:
        """One pass over the index, if no other worker swept within the interval.
        Returns the number of sessions taken over."""
        if self._sessions.closing:
            return 0
        if await self._leases.acquire(SWEEP_LEASE, ttl=self._interval * 0.8) is None:
            return 0
        taken = 0
        for offset in range(0, MAX_PER_SWEEP, PAGE):
            page = await self._index.page(offset, PAGE)
            if not page:
                break
            outcomes = await self._index.recover([session for session, _ in page])
            stale_before = time.time() * 1000 - self._idle_grace_ms
            idle = []
            for (session, score), outcome in zip(page, outcomes, strict=True):
                if isinstance(outcome, StartedHold):
                    taken += 1
                    self._metrics.sweeper_recoveries.inc()
                    self._sessions.adopt(session, outcome)
                elif outcome is None and score < stale_before:
                    idle.append((session, score))
            await self._index.forget(idle)
            if len(page) < PAGE:
                break
        if taken:
            log.warning("sweeper: took over %d session(s)", taken)
        return taken
