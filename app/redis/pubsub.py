"""One pub/sub connection per process, shared by everything that waits on Redis.

Two uses: `watch(channel)` hands out an event that is set on each message of a channel
while the caller waits (subscribed on the first watcher, unsubscribed after the last), and
`listen(channel, handler)` subscribes for the life of the process. Any number of waiters
share the one connection.

Waiting on pub/sub is never what correctness rests on: a message can be lost (reconnect,
or an expiry, which announces nothing), so every waiter also re-checks Redis after a
bounded pause. After a reconnect every waiter is woken to re-check at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from app.redis import as_text
from app.tasks import cancel_and_wait

log = logging.getLogger(__name__)

SUBSCRIBE_CONFIRM_TIMEOUT = 1.0
RECONNECT_DELAY = 0.2

Handler = Callable[[str], None]


class PubSubHub:
    def __init__(self, redis: Redis) -> None:
        self._pubsub: PubSub = redis.pubsub()
        self._handlers: dict[str, Handler] = {}
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._confirmed: dict[str, asyncio.Event] = {}
        self._commands = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        self._closed = False
        self._background: set[asyncio.Task[None]] = set()

    def listen(self, channel: str, handler: Handler) -> None:
        """Call `handler(data)` for every message on `channel`, for the life of the hub."""
        if self._reader is not None:
            raise RuntimeError("listen() is for set-up, before start()")
        self._handlers[channel] = handler

    def start(self) -> None:
        if not self._handlers:
            # Something must stay subscribed so that the connection exists to read from.
            self._handlers["lg:hub:idle"] = lambda _: None
        self._reader = asyncio.create_task(self._read(), name="pubsub-hub")

    async def close(self) -> None:
        self._closed = True
        for task in list(self._background):
            task.cancel()
        reader, self._reader = self._reader, None
        if reader is not None:
            await cancel_and_wait(reader)  # see app/tasks.py; `_closed` stops the loop too
        with contextlib.suppress(RedisError, OSError):
            await self._pubsub.aclose()

    @contextlib.asynccontextmanager
    async def watch(
        self, channel: str, event: asyncio.Event | None = None
    ) -> AsyncIterator[asyncio.Event]:
        """Yield an event (`event`, or a new one) that is set whenever a message arrives on
        `channel`."""
        event = event if event is not None else asyncio.Event()
        waiters = self._waiters.setdefault(channel, set())
        waiters.add(event)
        try:
            if len(waiters) == 1 and channel not in self._handlers:
                await self._subscribe(channel)
            yield event
        finally:
            waiters.discard(event)
            if not waiters:
                del self._waiters[channel]
                if channel not in self._handlers:
                    # In the background: the caller (a new lease holder) need not wait.
                    task = asyncio.create_task(self._unsubscribe(channel))
                    self._background.add(task)
                    task.add_done_callback(self._background.discard)

    async def _subscribe(self, channel: str) -> None:
        confirmed = self._confirmed[channel] = asyncio.Event()
        try:
            async with self._commands:
                await self._pubsub.subscribe(channel)
            # Until Redis confirms, a message could be missed; wait briefly for it.
            async with asyncio.timeout(SUBSCRIBE_CONFIRM_TIMEOUT):
                await confirmed.wait()
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("pub/sub: subscribe to %s failed: %r", channel, exc)

    async def _unsubscribe(self, channel: str) -> None:
        try:
            async with self._commands:
                if channel in self._waiters:
                    return  # a new watcher came meanwhile and needs the subscription
                self._confirmed.pop(channel, None)
                await self._pubsub.unsubscribe(channel)
        except (RedisError, OSError) as exc:
            log.warning("pub/sub: unsubscribe from %s failed: %r", channel, exc)

    async def _read(self) -> None:
        while not self._closed:
            try:
                if self._pubsub.connection is None:
                    async with self._commands:
                        await self._pubsub.subscribe(*self._handlers)
                message = await self._pubsub.get_message(timeout=1.0)
            except (RedisError, OSError) as exc:
                log.warning("pub/sub: connection failed: %r", exc)
                self._wake_all()  # a message may have been missed while disconnected
                await asyncio.sleep(RECONNECT_DELAY)
                continue
            if message is not None:
                self._dispatch(message)

    def _dispatch(self, message: dict[str, object]) -> None:
        channel = as_text(message["channel"])
        if message["type"] == "subscribe":
            confirmed = self._confirmed.get(channel)
            if confirmed is not None:
                confirmed.set()
            return
        if message["type"] != "message":
            return
        handler = self._handlers.get(channel)
        if handler is not None:
            try:
                handler(as_text(message["data"]))
            except Exception:
                log.exception("pub/sub: handler for %s failed", channel)
        for event in self._waiters.get(channel, ()):
            event.set()

    def _wake_all(self) -> None:
        for events in self._waiters.values():
            for event in events:
                event.set()
