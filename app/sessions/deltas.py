"""Reply deltas on their way to the session's event stream, a few per round trip.

A run's deltas are buffered for a short moment and written together (fenced, so a stale
holder writes none), each write saying at which byte of the reply it starts, so a re-sent
write is not applied twice. Whatever is still buffered when the run ends is sent by the
run's outcome script, which knows how much of the reply went out: a fast run costs no
extra round trip, and the deltas always precede the terminal event.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from app.errors import LeaseNotOwnedError, RedisUnavailableError

log = logging.getLogger(__name__)

FLUSH_DELAY = 0.05

Send = Callable[[int, str], Awaitable[None]]
"""send(offset, text): `text` starts at byte `offset` of the reply."""


class DeltaBuffer:
    def __init__(self, send: Send) -> None:
        self._send = send
        self._pending: list[str] = []
        self._offset = 0
        self._timer: asyncio.TimerHandle | None = None
        self._sender: asyncio.Task[None] | None = None
        self._closed = False

    def add(self, delta: str) -> None:
        if self._closed:
            return
        self._pending.append(delta)
        if self._timer is None:
            # A timer, not a task: a fast run ends before it fires and costs nothing.
            self._timer = asyncio.get_running_loop().call_later(FLUSH_DELAY, self._flush)

    async def drain(self) -> None:
        """Stop flushing, after the write under way (the outcome sends the rest)."""
        self._closed = True
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        sender, self._sender = self._sender, None
        if sender is not None and not sender.done():
            await asyncio.wait([sender])  # keep the order of the events

    def _flush(self) -> None:
        self._timer = None
        if self._closed:
            return
        if self._sender is not None and not self._sender.done():
            # One write at a time keeps the events in order; try again shortly.
            self._timer = asyncio.get_running_loop().call_later(FLUSH_DELAY, self._flush)
            return
        text, self._pending = "".join(self._pending), []
        if text:
            offset, self._offset = self._offset, self._offset + len(text.encode())
            self._sender = asyncio.create_task(self._send_quietly(offset, text))

    async def _send_quietly(self, offset: int, text: str) -> None:
        try:
            await self._send(offset, text)
        except RedisUnavailableError as exc:
            log.debug("deltas not written yet: %s", exc)
            self._pending.insert(0, text)  # again with the next write, from the same byte
            self._offset = offset
        except LeaseNotOwnedError as exc:
            log.debug("deltas not written: %s", exc)  # the renewals deal with the lease
