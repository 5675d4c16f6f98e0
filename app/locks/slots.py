"""Capacity slots: a fenced counting semaphore of `cap` slots per resource, across the fleet.

Acquire, renew and release are one script (one round trip) each (`slot_scripts`). A
waiter keeps one token for its whole wait and sleeps until it is woken on its own channel
by whoever frees a slot it is next in line for; it re-checks by itself only when the
earliest holder's hold could run out (an expiry announces nothing) and, at the latest,
every `waiter_refresh` seconds, which keeps its place in the queue alive (a waiter that
stops doing so, e.g. a dead worker's, drops out after `ttl`). A holder that dies frees its
slot when its hold expires, `ttl` after its last renewal; `SlotHeartbeat` renews a run's
slots and stops the run, loudly, when one is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from redis.asyncio import Redis

from app.errors import (
    LeaseLostError,
    LeaseNotOwnedError,
    RedisUnavailableError,
    RunExpiredError,
)
from app.keys import SlotKeys, slot_keys
from app.locks import scripts
from app.locks.slot_scripts import (
    AcquireReply,
    Claim,
    SlotCode,
    SlotScripts,
    acquire_args,
    decode_acquire,
    release_args,
    renew_args,
)
from app.redis.pubsub import PubSubHub

log = logging.getLogger(__name__)

MIN_PAUSE = 0.001
UNREACHABLE_RETRY = 0.5
"""How often a waiter tries again while Redis cannot be reached."""


@dataclass(slots=True)
class Slot:
    keys: SlotKeys
    token: str
    cap: int
    fence: int
    ttl: float
    valid_until: float
    """Event-loop time before which the hold cannot have expired in Redis."""

    @property
    def key(self) -> str:
        return self.keys.resource


class SlotManager:
    def __init__(
        self,
        redis: Redis,
        slot_scripts: SlotScripts,
        hub: PubSubHub,
        *,
        ttl: float,
        heartbeat_interval: float,
    ) -> None:
        self._redis = redis
        self.scripts = slot_scripts
        self._hub = hub
        self.ttl = ttl
        self.heartbeat_interval = heartbeat_interval
        self.waiter_refresh = heartbeat_interval

    async def try_acquire(
        self, resource: str, cap: int, claim: Claim, token: str | None = None
    ) -> tuple[Slot | None, AcquireReply]:
        """One attempt (one round trip): the slot, or None and the reply (WAIT, EXPIRED).
        An attempt that has to wait leaves the caller in the queue: `leave` it, or keep
        trying with the same `token`."""
        keys = slot_keys(resource)
        token = token or secrets.token_hex(16)
        sent = asyncio.get_running_loop().time()
        args = acquire_args(keys, token, cap, claim, _ms(self.ttl), _ms(self.ttl))
        reply = decode_acquire(await scripts.call(self.scripts.acquire, keys.all, args))
        if reply.code == SlotCode.OK:
            return Slot(keys, token, cap, reply.fence, self.ttl, sent + self.ttl), reply
        return None, reply

    async def acquire(
        self,
        resource: str,
        cap: int,
        claim: Claim,
        on_wait: Callable[[], Awaitable[None]] | None = None,
    ) -> Slot:
        """A slot, waiting as long as it takes; `on_wait` is awaited once, when the first
        attempt finds no slot. Raises RunExpiredError past `claim.start_by_us`. Cancelling
        the wait leaves the queue."""
        token = secrets.token_hex(16)
        slot, reply = await self.try_acquire(resource, cap, claim, token)
        if slot is not None:
            return slot
        if reply.code == SlotCode.EXPIRED:
            raise RunExpiredError(
                f"run {claim.run_id} did not start in time: waited for capacity of {resource}"
            )
        try:
            if on_wait is not None:
                await on_wait()
            return await self._wait(resource, cap, claim, token)
        except BaseException:
            await asyncio.shield(self._leave(resource, cap, token))
            raise

    async def _wait(self, resource: str, cap: int, claim: Claim, token: str) -> Slot:
        keys = slot_keys(resource)
        async with self._hub.watch(keys.wake + token) as woken:
            while True:
                # Subscribed (and cleared) before this attempt: a wake-up published after
                # it cannot be missed, one published before it is answered by it.
                woken.clear()
                try:
                    slot, reply = await self.try_acquire(resource, cap, claim, token)
                except RedisUnavailableError as exc:
                    # Keep waiting: Redis back within the waiter's TTL keeps its place.
                    log.warning("capacity %s: waiting, Redis unreachable: %s", resource, exc)
                    await asyncio.sleep(UNREACHABLE_RETRY)
                    continue
                if slot is not None:
                    return slot
                if reply.code == SlotCode.EXPIRED:
                    raise RunExpiredError(
                        f"run {claim.run_id} did not start in time: waited for capacity "
                        f"of {resource}"
                    )
                pause = min(self.waiter_refresh, max(reply.pause_ms / 1000, MIN_PAUSE))
                if claim.start_by_us:
                    pause = min(pause, max((claim.start_by_us - reply.now_us) / 1e6, 0))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(pause):
                        await woken.wait()

    async def _leave(self, resource: str, cap: int, token: str) -> None:
        """Leave the queue (or free a slot granted by a call whose reply never came)."""
        keys = slot_keys(resource)
        try:
            await scripts.call(self.scripts.release, keys.all, release_args(keys, token, cap))
        except RedisUnavailableError:
            log.warning("capacity %s: waiter not removed, Redis unreachable; it expires", resource)

    async def renew(self, slot: Slot) -> None:
        """Reset the hold's expiry; raises LeaseNotOwnedError if the slot is no longer ours."""
        sent = asyncio.get_running_loop().time()
        args = renew_args(slot.keys, slot.token, slot.cap, _ms(slot.ttl))
        code = await scripts.call(self.scripts.renew, slot.keys.all, args)
        if code != SlotCode.OK:
            raise LeaseNotOwnedError(slot.key)
        slot.valid_until = sent + slot.ttl

    async def release(self, slot: Slot) -> None:
        """Free the slot and wake the next waiter; raises LeaseNotOwnedError if not ours."""
        args = release_args(slot.keys, slot.token, slot.cap)
        code = await scripts.call(self.scripts.release, slot.keys.all, args)
        if code != SlotCode.OK:
            raise LeaseNotOwnedError(slot.key)

    async def release_quietly(self, slot: Slot) -> bool:
        """Release; False (logged) when the slot had expired or Redis is unreachable."""
        try:
            await self.release(slot)
        except LeaseNotOwnedError:
            log.warning(
                "capacity %s (fence %d) had already expired at release", slot.key, slot.fence
            )
            return False
        except RedisUnavailableError:
            log.warning(
                "capacity %s (fence %d) not released: Redis unreachable; it will expire",
                slot.key,
                slot.fence,
            )
            return False
        return True


OnLost = Callable[[Slot, LeaseLostError], None]


class SlotHeartbeat:
    """Renews a changing set of slots (a run's) every `interval`; a slot found gone, or
    not renewed before it could expire (Redis unreachable), is lost: logged at ERROR,
    passed to `on_lost` (which stops the run) and dropped from the set.

    Same timeline as the lease's heartbeat (`app/locks/heartbeat.py`): the work is stopped
    TTL/5 before the hold could expire, so no other run can get the slot while it runs."""

    def __init__(self, manager: SlotManager, interval: float, on_lost: OnLost) -> None:
        self._manager = manager
        self._interval = interval
        self._on_lost = on_lost
        self.slots: list[Slot] = []
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._stopped = False

    def add(self, slot: Slot) -> None:
        self.slots.append(slot)
        if self._task is None and self._timer is None and not self._stopped:
            # A timer until the first renewal is due: runs shorter than an interval cost
            # no task at all.
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._interval, self._begin)

    def discard(self, slot: Slot) -> None:
        with contextlib.suppress(ValueError):
            self.slots.remove(slot)

    def _begin(self) -> None:
        self._timer = None
        if not self._stopped:
            self._task = asyncio.create_task(self._beat(), name="slot-heartbeat")

    async def stop(self) -> None:
        self._stopped = True
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _beat(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopped:
            failing = False
            for slot in list(self.slots):
                failing |= not await self._renew(slot, loop.time())
            await asyncio.sleep(self._interval / 3 if failing else self._interval)

    async def _renew(self, slot: Slot, now: float) -> bool:
        """False when the renewal failed and should be retried soon."""
        budget = slot.valid_until - slot.ttl / 5 - now
        if budget <= 0:
            self._lose(slot, "Redis unreachable until the slot could expire")
            return True
        try:
            async with asyncio.timeout(budget):
                await self._manager.renew(slot)
        except LeaseNotOwnedError:
            self._lose(slot, "the slot expired")
        except (RedisUnavailableError, TimeoutError) as exc:
            log.warning("capacity %s (fence %d): renewal failed: %s", slot.key, slot.fence, exc)
            return False
        except Exception as exc:  # never die silently while the run goes on
            log.exception("capacity %s: unexpected renewal error", slot.key)
            self._lose(slot, f"renewal failed unexpectedly: {exc!r}")
        return True

    def _lose(self, slot: Slot, detail: str) -> None:
        self.discard(slot)
        lost = LeaseLostError(slot.key, slot.fence, detail)
        log.error(
            "capacity slot %s (fence %d) lost: %s; stopping the run", slot.key, slot.fence, detail
        )
        self._on_lost(slot, lost)


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
