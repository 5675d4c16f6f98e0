"""Reply deltas on their way to the session's event stream, a few per round trip.

A run's deltas are buffered for a short moment and written together (fenced, so a stale
holder writes none). Whatever is still buffered when the run ends goes out with the run's
outcome, in the same script, so a fast run costs no extra round trip and the deltas always
precede the terminal event.
"""

from __future__ import annotations

import asyncio
import contextlib
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
        self._flusher: asyncio.Task[None] | None = None
        self._sending = False

    def add(self, delta: str) -> None:
        self._pending.append(delta)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_soon())

    async def drain(self) -> str:
        """Stop flushing; return what was never sent (the caller sends it with the outcome)."""
        flusher, self._flusher = self._flusher, None
        if flusher is not None and not flusher.done():
            if self._sending:
                await asyncio.wait([flusher])  # keep the order of the events
            else:
                flusher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await flusher
        text, self._pending = "".join(self._pending), []
        return text

    async def _flush_soon(self) -> None:
        await asyncio.sleep(FLUSH_DELAY)
        text, self._pending = "".join(self._pending), []
        if not text:
            return
        self._sending = True
        try:
            await self._send(text)
        except (LeaseNotOwnedError, RedisUnavailableError) as exc:
            log.debug("deltas not written: %s", exc)  # the heartbeat deals with the lease
        finally:
            self._sending = False
