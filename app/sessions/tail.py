"""Reading a session's event stream as it grows, from any worker.

The stream is in Redis, so the worker reading it need not be the one running the
session. A reader waits on the session's channel through the worker's one shared pub/sub
connection and reads with pooled connections; a quiet stream is read again every RECHECK
seconds anyway (a lost announcement delays nothing for longer), and an idle tick tells
the reader that nothing came, so it can look at the run's record instead.

The loop of `GET /v1/sessions/{id}/events` and of the AG-UI endpoint, with idle ticks
and a pause while Redis is unreachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from app.errors import RedisUnavailableError
from app.redis.pubsub import PubSubHub
from app.sessions.reads import Reads
from app.sessions.ref import SessionRef

log = logging.getLogger(__name__)

RECHECK = 5.0
BATCH = 100

Entry = tuple[str, dict[str, str]]
"""An entry of the stream: its id (`<ms>-<seq>`) and fields (type, run_id, text)."""


async def tail(
    reads: Reads, hub: PubSubHub, session: SessionRef, after: str
) -> AsyncIterator[list[Entry]]:
    """Batches of the session's events after id `after`, in order, as they arrive; an
    empty batch after RECHECK seconds without any, or after Redis failed a read."""
    last = after
    async with hub.watch(session.keys.events) as arrived:
        while True:
            arrived.clear()  # before reading: an entry added after the read wakes us
            try:
                batch = await reads.events_after(session, last, BATCH)
            except RedisUnavailableError as exc:
                log.debug("session %s: events not read: %s", session.session_id, exc)
                await asyncio.sleep(RECHECK)
                yield []
                continue
            if batch:
                last = batch[-1][0]
                yield batch
                if len(batch) == BATCH:
                    continue  # more are waiting, and no announcement will say so
            if not await _woken(arrived, RECHECK):
                yield []


async def _woken(arrived: asyncio.Event, timeout: float) -> bool:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await arrived.wait()
            return True
    return False
