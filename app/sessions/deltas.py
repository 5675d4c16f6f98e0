"""What a run streams on its way to the session's event stream, a few items per round trip.

Reply text and structured events (tool calls, tool results, state, steps...) are buffered
for a short moment and written together, in order, by one fenced script call (a stale
holder writes none). Each write carries its batch number, so a re-sent write is not
applied twice, and one at a time is in flight, so the events keep their order. Reply text
still buffered when the run ends is sent by the run's outcome script, which knows how much
of the reply went out: a fast run costs no extra round trip. Structured events still
buffered then are sent first, before the outcome.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from app.errors import LeaseNotOwnedError, RedisUnavailableError

log = logging.getLogger(__name__)

FLUSH_DELAY = 0.05
DELTA = "delta"
STATE_ITEM = "$state"
"""An item that is no event: the session's agent state as the run has left it (JSON)."""

Item = tuple[str, str]
"""(kind, payload): ("delta", reply text), or (event kind, its data as JSON)."""
Send = Callable[[int, list[Item]], Awaitable[None]]
"""send(batch number, items): the items of batch 1, 2, ... in order."""


class DeltaBuffer:
    def __init__(self, send: Send) -> None:
        self._send = send
        self._pending: list[Item] = []
        self._batch = 0
        self._events_pending = False
        self._timer: asyncio.TimerHandle | None = None
        self._sender: asyncio.Task[None] | None = None
        self._closed = False

    def add(self, delta: str) -> None:
        self._add((DELTA, delta))

    def add_event(self, kind: str, payload: str) -> None:
        self._events_pending = True
        self._add((kind, payload))

    def _add(self, item: Item) -> None:
        if self._closed:
            return
        if item[0] == DELTA and self._pending and self._pending[-1][0] == DELTA:
            self._pending[-1] = (DELTA, self._pending[-1][1] + item[1])
        else:
            self._pending.append(item)
        if self._timer is None:
            # A timer, not a task: a fast run ends before it fires and costs nothing.
            self._timer = asyncio.get_running_loop().call_later(FLUSH_DELAY, self._flush)

    async def drain(self) -> None:
        """Stop flushing, after the write under way; structured events still buffered are
        written now (reply text is left to the outcome)."""
        self._closed = True
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        sender, self._sender = self._sender, None
        if sender is not None and not sender.done():
            await asyncio.wait([sender])  # keep the order of the events
        if any(kind != DELTA for kind, _ in self._pending):
            items, self._pending = self._pending, []
            self._batch += 1
            await self._send_quietly(self._batch, items)

    def _flush(self) -> None:
        self._timer = None
        if self._closed:
            return
        if self._sender is not None and not self._sender.done():
            # One write at a time keeps the events in order; try again shortly.
            self._timer = asyncio.get_running_loop().call_later(FLUSH_DELAY, self._flush)
            return
        items, self._pending = self._pending, []
        if items:
            self._batch += 1
            self._sender = asyncio.create_task(self._send_quietly(self._batch, items))

    async def _send_quietly(self, batch: int, items: list[Item]) -> None:
        try:
            await self._send(batch, items)
        except RedisUnavailableError as exc:
            log.debug("run events not written yet: %s", exc)
            self._pending[:0] = items  # again with the next write, under the same number
            self._batch = batch - 1
        except LeaseNotOwnedError as exc:
            log.debug("run events not written: %s", exc)  # the renewals deal with the lease
