"""Reply deltas on their way to the session's event stream, a few per round trip.

A run's deltas are buffered for a short moment and written together (fenced, so a stale
holder writes none). Whatever is still buffered when the run ends goes out with the run's
outcome, in the same script, so a fast run costs no extra round trip and the deltas always
precede the terminal event.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from app.errors import LeaseNotOwnedError, RedisUnavailableError

log = logging.getLogger(__name__)

FLUSH_DELAY = 0.05

Send = Callable[[str], Awaitable[None]]


class DeltaBuffer:
    def __init__(self, send: Send) -> None:
        self._send = send
        self._pending: list[str] = []
        self._timer: asyncio.TimerHandle | None = None
        self._sender: asyncio.Task[None] | None = None

    def add(self, delta: str) -> None:
        self._pending.append(delta)
        if self._timer is None:
            # A timer, not a task: a fast run ends before it fires and costs nothing.
            self._timer = asyncio.get_running_loop().call_later(FLUSH_DELAY, self._flush)

    async def drain(self) -> str:
        """Stop flushing; return what was never sent (the caller sends it with the outcome)."""
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        sender, self._sender = self._sender, None
        if sender is not None and not sender.done():
            await asyncio.wait([sender])  # keep the order of the events
        text, self._pending = "".join(self._pending), []
        return text

    def _flush(self) -> None:
        self._timer = None
        if self._sender is not None and not self._sender.done():
            # One write at a time keeps the events in order; try again shortly.
            self._timer = asyncio.get_running_loop().call_later(FLUSH_DELAY, self._flush)
            return
        text, self._pending = "".join(self._pending), []
        if text:
            self._sender = asyncio.create_task(self._send_quietly(text))

    async def _send_quietly(self, text: str) -> None:
        try:
            await self._send(text)
        except (LeaseNotOwnedError, RedisUnavailableError) as exc:
            log.debug("deltas not written: %s", exc)  # the heartbeat deals with the lease
