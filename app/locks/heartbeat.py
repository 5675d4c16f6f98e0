"""The heartbeat that keeps a lease alive while its guarded work runs.

Failure timeline it is built for (TTL 10 s, interval 3.3 s, margin TTL/5 = 2 s):

    t=0     lease granted, valid until 10
    t=3.3   renewal ok, valid until 13.3
    t=6.6   Redis stops answering; the renewal fails; retry every 1.1 s
    t=11.3  no renewal has succeeded and the lease may expire at 13.3:
            the work is stopped now (fail closed), 2 s before another worker could
            take the lease, so two holders never run at once.

A renewal that finds the lease held by another token, or gone, stops the work at once.
Either loss is logged at ERROR with the key and fence and counted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from app.errors import LeaseLostError, LeaseNotOwnedError, RedisUnavailableError
from app.metrics import Metrics
from app.tasks import cancel_and_wait

if TYPE_CHECKING:
    from app.locks.lease import Lease

log = logging.getLogger(__name__)


class Heartbeat:
    """Calls `renew` every `interval`; `renew` raises LeaseNotOwnedError when the lease is gone
    and updates `lease.valid_until` when it succeeds."""

    OnLost = Callable[[LeaseLostError], None]

    def __init__(
        self,
        lease: Lease,
        interval: float,
        renew: Callable[[], Awaitable[None]],
        on_lost: OnLost,
        metrics: Metrics,
    ) -> None:
        self._lease = lease
        self._renew = renew
        self._metrics = metrics
        self._interval = interval
        self._on_lost = on_lost
        self._margin = lease.ttl / 5
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._stopped = False
        self.lost: LeaseLostError | None = None

    def start(self) -> None:
        # The first renewal is due only after one interval: a timer until then, not a task,
        # so that the many runs shorter than an interval cost no task at all.
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._interval, self._begin)

    def _begin(self) -> None:
        self._timer = None
        if self._stopped:
            return
        self._task = asyncio.create_task(self._beat(), name=f"heartbeat:{self._lease.key}")

    async def stop(self) -> None:
        """Stop renewing; always before the lease is released."""
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        self._stopped = True
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)

    async def _beat(self) -> None:
        loop = asyncio.get_running_loop()
        delay = 0.0  # started one interval after the grant
        while not self._stopped:
            if delay:
                await asyncio.sleep(delay)
            budget = self._lease.valid_until - self._margin - loop.time()
            if budget <= 0:
                return self._lose("unreachable", "Redis unreachable until the lease could expire")
            try:
                async with asyncio.timeout(budget):
                    await self._renew()
            except LeaseNotOwnedError:
                return self._lose("taken", "the lease expired or was taken or reset")
            except (RedisUnavailableError, TimeoutError) as exc:
                self._metrics.lease_renewals.labels("error").inc()
                log.warning(
                    "lease %s (fence %d): renewal failed, retrying: %s",
                    self._lease.key,
                    self._lease.fence,
                    exc,
                )
                delay = min(self._interval / 3, max(budget, 0.0))
            except Exception as exc:  # never die silently while the work goes on
                log.exception("lease %s: unexpected renewal error", self._lease.key)
                return self._lose("error", f"renewal failed unexpectedly: {exc!r}")
            else:
                delay = self._interval

    def _lose(self, reason: str, detail: str) -> None:
        self.lost = LeaseLostError(self._lease.key, self._lease.fence, detail)
        self._metrics.lease_losses.labels(reason).inc()
        log.error(
            "lease %s (fence %d) lost: %s; stopping the guarded work",
            self._lease.key,
            self._lease.fence,
            detail,
        )
        self._on_lost(self.lost)
