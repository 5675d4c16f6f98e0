"""The fenced lease: exclusive ownership of a named resource for a bounded time.

A grant sets the lease key to a fresh random token with a TTL and bumps the resource's
fence counter, in one script. Renew and release compare the token first, so a caller
that does not hold the lease can never extend or delete it. Token and fence live on the
`Lease` handed to the caller, never in shared state.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from redis.asyncio import Redis

from app.errors import LeaseLostError, LeaseNotOwnedError, LeaseTimeoutError, RedisUnavailableError
from app.keys import LeaseKeys, lease_keys
from app.locks import scripts
from app.locks.heartbeat import Heartbeat
from app.locks.scripts import Code, LeaseScripts
from app.metrics import Metrics
from app.redis.pubsub import PubSubHub

log = logging.getLogger(__name__)

# Shortest pause between two attempts of a blocking acquire, so a lease that is released
# and re-taken in a tight loop by others does not turn a waiter into a busy loop.
MIN_RETRY_DELAY = 0.001


@dataclass(slots=True)
class Lease:
    keys: LeaseKeys
    token: str
    fence: int
    ttl: float
    valid_until: float
    """Event-loop time before which the lease cannot have expired in Redis: the send
    time of the last successful grant or renewal plus the TTL."""

    @property
    def key(self) -> str:
        return self.keys.resource


class LeaseManager:
    def __init__(
        self,
        redis: Redis,
        lease_scripts: LeaseScripts,
        hub: PubSubHub,
        *,
        ttl: float,
        heartbeat_interval: float,
        metrics: Metrics,
    ) -> None:
        self._redis = redis
        self._scripts = lease_scripts
        self._hub = hub
        self.ttl = ttl
        self.heartbeat_interval = heartbeat_interval
        self.metrics = metrics

    async def acquire(self, key: str, ttl: float | None = None) -> Lease | None:
        """Try once (one round trip); the lease, or None when another holder has it."""
        lease, _ = await self._try_acquire(lease_keys(key), ttl or self.ttl)
        return lease

    async def wait_acquire(self, key: str, timeout: float, ttl: float | None = None) -> Lease:
        """Acquire, waiting up to `timeout` seconds; raises LeaseTimeoutError.

        A waiter sleeps until a release is announced, but never longer than the
        holder's remaining TTL, since an expiry announces nothing.
        """
        keys = lease_keys(key)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        lease, pttl_ms = await self._try_acquire(keys, ttl or self.ttl)
        if lease is not None:
            return lease
        async with self._hub.watch(keys.channel) as released:
            while True:
                # Subscribed now, so a release after this attempt cannot be missed.
                released.clear()
                lease, pttl_ms = await self._try_acquire(keys, ttl or self.ttl)
                if lease is not None:
                    return lease
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise LeaseTimeoutError(key, timeout)
                pause = min(remaining, max(pttl_ms / 1000, MIN_RETRY_DELAY))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(pause):
                        await released.wait()

    async def renew(self, lease: Lease) -> None:
        """Reset the TTL; raises LeaseNotOwnedError if the lease is no longer ours."""
        sent = asyncio.get_running_loop().time()
        code = await scripts.call(
            self._scripts.renew, [lease.keys.lease], [lease.token, _ms(lease.ttl)]
        )
        self.metrics.lease_renewals.labels("ok" if code == Code.OK else "not_owned").inc()
        scripts.check(code, lease.key)
        lease.valid_until = sent + lease.ttl

    async def release(self, lease: Lease) -> None:
        """Delete the lease and wake a waiter; raises LeaseNotOwnedError if not ours."""
        code = await scripts.call(
            self._scripts.release, [lease.keys.lease], [lease.token, lease.keys.channel]
        )
        scripts.check(code, lease.key)

    def heartbeat(
        self,
        lease: Lease,
        on_lost: Heartbeat.OnLost,
        renew: Callable[[], Awaitable[None]] | None = None,
    ) -> Heartbeat:
        """A heartbeat for `lease`; `renew` replaces the plain renewal (e.g. one that also
        reads the holder's pending signals in the same round trip)."""
        return Heartbeat(
            lease,
            self.heartbeat_interval,
            renew or functools.partial(self.renew, lease),
            on_lost,
            self.metrics,
        )

    @contextlib.asynccontextmanager
    async def hold(
        self, key: str, *, timeout: float = 0.0, ttl: float | None = None
    ) -> AsyncIterator[Lease]:
        """Hold a lease for the body, renewed by a heartbeat, released at the end.

        If the lease is lost while held (taken, expired, or Redis unreachable for so
        long that it may have expired), the body is cancelled and LeaseLostError is
        raised out of the block. `timeout=0` makes a single attempt.
        """
        if timeout > 0:
            lease = await self.wait_acquire(key, timeout, ttl)
        else:
            maybe = await self.acquire(key, ttl)
            if maybe is None:
                raise LeaseTimeoutError(key, timeout)
            lease = maybe
        task = asyncio.current_task()
        assert task is not None
        cancelled_by_loss = False

        def on_lost(_: LeaseLostError) -> None:
            nonlocal cancelled_by_loss
            cancelled_by_loss = True
            task.cancel()

        heartbeat = self.heartbeat(lease, on_lost)
        heartbeat.start()
        try:
            try:
                yield lease
            finally:
                await heartbeat.stop()
                if heartbeat.lost is None:
                    # Shielded: a second cancel must not leave the lease held to its TTL.
                    await asyncio.shield(self._release_quietly(lease))
        except asyncio.CancelledError:
            if cancelled_by_loss and task.uncancel() == 0 and heartbeat.lost is not None:
                raise heartbeat.lost from None
            raise
        if heartbeat.lost is not None:
            # Lost after the body's last await: its work was not guarded to the end.
            await _absorb_pending_cancel(task)
            raise heartbeat.lost

    async def _release_quietly(self, lease: Lease) -> None:
        try:
            await self.release(lease)
        except LeaseNotOwnedError:
            log.warning(
                "lease %s (fence %d) had already expired at release", lease.key, lease.fence
            )
        except RedisUnavailableError:
            log.warning(
                "lease %s (fence %d) not released: Redis unreachable; it will expire",
                lease.key,
                lease.fence,
            )

    async def _try_acquire(self, keys: LeaseKeys, ttl: float) -> tuple[Lease | None, int]:
        token = secrets.token_hex(16)
        sent = asyncio.get_running_loop().time()
        code, value = await scripts.call(
            self._scripts.acquire, [keys.lease, keys.fence], [token, _ms(ttl)]
        )
        if code == Code.HELD:
            self.metrics.lease_acquisitions.labels("held").inc()
            return None, int(value)
        self.metrics.lease_acquisitions.labels("granted").inc()
        return Lease(keys, token, int(value), ttl, sent + ttl), 0


async def _absorb_pending_cancel(task: asyncio.Task[object]) -> None:
    try:
        await asyncio.sleep(0)
    except asyncio.CancelledError:
        task.uncancel()


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
