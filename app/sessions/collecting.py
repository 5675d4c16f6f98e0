"""A holder waiting, with the session held, for a collect run to finish collecting.

The scripts that start runs (`pop_next`) leave a collect run that still collects at the
head of the queue and tell the holder how long to wait; the holder waits that long (its
lease renewed as always), then asks TAKE to start it, which may answer "wait longer"
(messages joined meanwhile). The wait is stoppable like a run: cancelling the collect run
or stopping the session tells the holder (control channel) to stop waiting now, a lost
lease or a reset ends the hold, and a shutdown releases the session with its runs queued
for another worker.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from app.errors import LeaseNotOwnedError, RedisUnavailableError
from app.locks import Lease
from app.sessions.active import ActiveRun
from app.sessions.models import Run
from app.sessions.ref import SessionRef
from app.sessions.renewal import Held

if TYPE_CHECKING:
    from app.sessions.holder import HolderDeps

log = logging.getLogger(__name__)

RETRY_DELAY = 0.1


async def await_collect(
    deps: HolderDeps, session: SessionRef, held: Held, run: Run, current: list[ActiveRun]
) -> Run | None:
    """Wait until `run`, a collect run, may start; the run to execute next (that one, or
    the next in the queue if it was cancelled meanwhile), or None when the session was
    released or the hold lost (then a request waiting for the run is told to read it)."""
    next_run = await _await(deps, session, held, run, current)
    if next_run is None:
        deps.waiters.wake(run.run_id)
    return next_run


async def _await(
    deps: HolderDeps, session: SessionRef, held: Held, run: Run, current: list[ActiveRun]
) -> Run | None:
    next_run: Run | None = run
    while next_run is not None and next_run.wait_ms is not None:
        waiting = ActiveRun(next_run)
        waiting.task = asyncio.create_task(asyncio.sleep((next_run.wait_ms or 0) / 1000))
        deps.active[next_run.run_id] = waiting
        current[:] = [waiting]
        early = deps.early_stop(next_run.run_id)
        if held.lost is not None:
            waiting.stop("lost")
        elif early is not None or deps.closing():
            waiting.stop(early or "interrupted:shutdown")
        elif deps.early_wake(next_run.run_id):
            waiting.stop("wake")
        try:
            await asyncio.wait([waiting.task])
        finally:
            waiting.task.cancel()
            deps.active.pop(next_run.run_id, None)
            current.clear()
        reason = (waiting.stop_reason or "").partition(":")[0]
        if held.lost is not None or reason in ("lost", "reset"):
            return None
        taken = await _take(deps, session, held.lease)
        if taken is None:
            return None
        next_run, queued = taken
        if next_run is None and queued:
            await _wake_another(deps, session)
    return next_run


async def _take(
    deps: HolderDeps, session: SessionRef, lease: Lease
) -> tuple[Run | None, int] | None:
    loop = asyncio.get_running_loop()
    while True:
        try:
            return await deps.writes.take(session, lease, release=deps.closing())
        except LeaseNotOwnedError:
            log.warning("session %s: lease lost waiting for a collect run", session.session_id)
            return None
        except RedisUnavailableError:
            if loop.time() + RETRY_DELAY >= lease.valid_until - lease.ttl / 5:
                log.error(
                    "session %s: Redis unreachable while waiting for a collect run; "
                    "the session will be recovered",
                    session.session_id,
                )
                return None
            await asyncio.sleep(RETRY_DELAY)


async def _wake_another(deps: HolderDeps, session: SessionRef) -> None:
    try:
        await deps.control.wake(session)
    except RedisUnavailableError:
        log.warning("session %s: wake-up not sent; the sweeper will take it", session.session_id)
