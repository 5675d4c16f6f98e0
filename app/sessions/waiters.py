"""Requests that wait for a run to end (`?wait`, cancel).

A run this worker holds ends in this worker's memory: its holder hands the recorded run
to `deliver`, and a waiter here takes it from there with no Redis read at all. A waiter for
a run held elsewhere listens on that session's event channel only while it waits (so no
notice goes to every worker), and reads the run when something happened, or after a
bounded pause, since a pub/sub message can be lost.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict

from app.redis.pubsub import PubSubHub
from app.sessions.models import Run
from app.sessions.reads import Reads
from app.sessions.ref import SessionRef

RECENT_KEPT = 2048
RECHECK = 1.0


class Waiters:
    def __init__(self, reads: Reads, hub: PubSubHub) -> None:
        self._reads = reads
        self._hub = hub
        self._events: dict[str, set[asyncio.Event]] = {}
        self._recent: OrderedDict[str, Run] = OrderedDict()

    def wake(self, run_id: str) -> None:
        """A holder of this worker stopped holding `run_id` without recording its end."""
        for event in self._events.get(run_id, ()):
            event.set()

    def deliver(self, run: Run) -> None:
        """A holder of this worker recorded `run` as ended."""
        if not self._events.get(run.run_id):
            # Nobody waits yet; a request may be about to (its admission and the run's end
            # can cross), so keep it briefly.
            self._recent[run.run_id] = run
            while len(self._recent) > RECENT_KEPT:
                self._recent.popitem(last=False)
            return
        self._recent[run.run_id] = run
        for event in self._events[run.run_id]:
            event.set()

    async def wait(self, session: SessionRef, run_id: str, timeout: float, *, local: bool) -> Run:
        """The run once ended, or as it is when `timeout` seconds have passed. `local`: a
        holder of this worker runs it now, so its end arrives through `deliver`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        event = asyncio.Event()
        self._events.setdefault(run_id, set()).add(event)
        try:
            if local and run_id not in self._recent:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(deadline - loop.time()):
                        await event.wait()
            found = self._recent.get(run_id)
            if found is not None:
                return found
            # Not ended here (the holder lost its lease, or it runs elsewhere).
            async with self._hub.watch(session.keys.events, event):
                return await self._wait_remote(session, run_id, event, deadline)
        finally:
            waiters = self._events.get(run_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._events[run_id]
                    self._recent.pop(run_id, None)

    async def _wait_remote(
        self, session: SessionRef, run_id: str, event: asyncio.Event, deadline: float
    ) -> Run:
        loop = asyncio.get_running_loop()
        while True:
            event.clear()  # before reading, so that an end after the read still wakes us
            found = self._recent.get(run_id)
            run = found if found is not None else await self._reads.get_run(session, run_id)
            remaining = deadline - loop.time()
            if run.status.terminal or remaining <= 0:
                return run
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, RECHECK)):
                    await event.wait()
