"""Wake lease waiters when a lease is released, over one pub/sub connection per process.

A release publishes on the lease's channel (inside the release script). Waiters of this
process register an event per channel; one reader task sets those events. Waiting is
never correctness-critical: a lost message (reconnect, expiry, which sends nothing) only
delays a waiter until its next retry, which `LeaseManager.wait_acquire` caps at the
holder's remaining TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

SUBSCRIBE_CONFIRM_TIMEOUT = 1.0
RECONNECT_DELAY = 0.2


class ReleaseWakeups:
    def __init__(self, redis: Redis) -> None:
        self._pubsub: PubSub = redis.pubsub()
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._confirmed: dict[str, asyncio.Event] = {}
        self._commands = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        # Subscribed for the life of the process so the connection always exists.
        self._own_channel = f"lg:wakeups:{uuid.uuid4().hex}"

    async def start(self) -> None:
        self._reader = asyncio.create_task(self._read(), name="lease-wakeups")

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        with contextlib.suppress(RedisError, OSError):
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]

    @contextlib.asynccontextmanager
    async def watch(self, channel: str) -> AsyncIterator[asyncio.Event]:
        """Yield an event that is set whenever `channel` announces a release."""
        event = asyncio.Event()
        waiters = self._waiters.setdefault(channel, set())
        waiters.add(event)
        try:
            if len(waiters) == 1:
                await self._subscribe(channel)
            yield event
        finally:
            waiters.discard(event)
            if not waiters:
                del self._waiters[channel]
                await self._unsubscribe(channel)

    async def _subscribe(self, channel: str) -> None:
        confirmed = self._confirmed[channel] = asyncio.Event()
        try:
            async with self._commands:
                await self._pubsub.subscribe(channel)
            # Until Redis confirms, a release could be missed; wait briefly for it.
            async with asyncio.timeout(SUBSCRIBE_CONFIRM_TIMEOUT):
                await confirmed.wait()
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("release wakeups: subscribe to %s failed: %r", channel, exc)

    async def _unsubscribe(self, channel: str) -> None:
        self._confirmed.pop(channel, None)
        try:
            async with self._commands:
                await self._pubsub.unsubscribe(channel)
        except (RedisError, OSError) as exc:
            log.warning("release wakeups: unsubscribe from %s failed: %r", channel, exc)

    async def _read(self) -> None:
        while True:
            try:
                if self._pubsub.connection is None:
                    async with self._commands:
                        await self._pubsub.subscribe(self._own_channel)
                message = await self._pubsub.get_message(timeout=1.0)
            except (RedisError, OSError) as exc:
                log.warning("release wakeups: pub/sub connection failed: %r", exc)
                self._wake_all()  # a release may have been missed while disconnected
                await asyncio.sleep(RECONNECT_DELAY)
                continue
            if message is not None:
                self._dispatch(message)

    def _dispatch(self, message: dict[str, object]) -> None:
        channel = message["channel"]
        name = channel.decode() if isinstance(channel, bytes) else str(channel)
        if message["type"] == "subscribe":
            confirmed = self._confirmed.get(name)
            if confirmed is not None:
                confirmed.set()
        elif message["type"] == "message":
            for event in self._waiters.get(name, ()):
                event.set()

    def _wake_all(self) -> None:
        for events in self._waiters.values():
            for event in events:
                event.set()
