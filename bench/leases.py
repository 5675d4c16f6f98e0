"""Lease primitive benchmark: leasegate's lease against three Redis lock libraries.

Run `python -m bench.leases` (or `make bench`). One redis-server is started in a
temporary directory for the whole run. For each lock it measures

* uncontended acquire+release pairs per second from one client, on one key released
  each time: a warm-up, then rounds interleaved across the locks, median round;
* contended hand-off latency: a holder holds the lock while a waiter (an asyncio task
  for the async locks, a thread for the sync ones, each on its own client) is blocked in
  a blocking acquire; the time from just before the holder's release until the waiter's
  acquire returns. A polling waiter is released at a random point of its retry interval,
  so that the result does not depend on how the pause lines up with its polls.

The results are printed and written to the "## Lease primitive" section of
docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import platform
import random
import statistics
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

import redis
import redis_lock
from pottery import Redlock
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.lock import Lock as AsyncRedisLock

from app.keys import lease_keys
from app.locks import Lease, LeaseManager, LeaseScripts
from app.metrics import Metrics
from app.redis import create_redis
from app.redis.pubsub import PubSubHub
from app.redis.server import RedisServer
from app.settings import Settings
from bench.report import markdown_table, write_section

WARMUP_PAIRS = 200
ROUNDS = 10
PAIRS_PER_ROUND = 300
HANDOFFS = 200
POLLING_LANES = 4  # a polling lock's hand-offs run on this many keys at once (see _handoffs)

LOCK_TTL = 10.0  # seconds; every lock is taken with this expiry
WAIT_TIMEOUT = 5  # seconds a blocking acquire may wait
SETTLE = 0.005  # pause after the waiter is known to wait (or started), before the release
READY_TIMEOUT = 2.0  # how long to wait for a waiter to show up as waiting

HANDOFF_P99_TARGET_MS = 5.0
SECTION = "## Lease primitive"

H = TypeVar("H")


class LockSubject(ABC):
    """One lock under test, driven from the benchmark's event loop."""

    name: str
    poll_interval: float = 0.0
    """Longest pause between two attempts of a blocking acquire; 0 if woken by a release."""

    @abstractmethod
    async def run_pairs(self, key: str, pairs: int) -> float:
        """Acquire and release `key` `pairs` times; the elapsed seconds."""

    @abstractmethod
    async def handoff(self, key: str, pause: float) -> float:
        """Seconds from just before a holder's release to a blocked waiter's acquire."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release the subject's clients."""


class AsyncLockSubject(LockSubject, Generic[H]):
    """An asyncio lock: holder and waiter are tasks of this event loop."""

    @abstractmethod
    async def acquire_now(self, key: str) -> H:
        """One attempt on the holder's client; raises if the lock is taken."""

    @abstractmethod
    async def acquire_waiting(self, key: str) -> H:
        """A blocking acquire on the waiter's client."""

    @abstractmethod
    async def release(self, handle: H) -> None: ...

    async def waiter_is_waiting(self, key: str) -> bool:
        """Whether a waiter is visibly blocked on `key`; True if the lock shows no sign."""
        return True

    async def run_pairs(self, key: str, pairs: int) -> float:
        started = time.perf_counter()
        for _ in range(pairs):
            await self.release(await self.acquire_now(key))
        return time.perf_counter() - started

    async def handoff(self, key: str, pause: float) -> float:
        held = await self.acquire_now(key)
        waiter = asyncio.create_task(self._wait_then_release(key))
        try:
            await _until_async(lambda: self.waiter_is_waiting(key))
            await asyncio.sleep(pause)
            released_at = time.perf_counter()
            await self.release(held)
            return await waiter - released_at
        finally:
            waiter.cancel()  # only left running if something above failed

    async def _wait_then_release(self, key: str) -> float:
        handle = await self.acquire_waiting(key)
        acquired_at = time.perf_counter()
        await self.release(handle)
        return acquired_at


class SyncLockSubject(LockSubject, Generic[H]):
    """A synchronous lock: the holder runs in a worker thread, the waiter in another."""

    @abstractmethod
    def acquire_now(self, key: str) -> H: ...

    @abstractmethod
    def acquire_waiting(self, key: str) -> H: ...

    @abstractmethod
    def release(self, handle: H) -> None: ...

    def waiter_is_waiting(self, key: str) -> bool:
        return True

    async def run_pairs(self, key: str, pairs: int) -> float:
        return await asyncio.to_thread(self._run_pairs, key, pairs)

    async def handoff(self, key: str, pause: float) -> float:
        return await asyncio.to_thread(self._handoff, key, pause)

    def _run_pairs(self, key: str, pairs: int) -> float:
        started = time.perf_counter()
        for _ in range(pairs):
            self.release(self.acquire_now(key))
        return time.perf_counter() - started

    def _handoff(self, key: str, pause: float) -> float:
        held = self.acquire_now(key)
        acquired_at: list[float] = []
        waiter = threading.Thread(target=self._wait_then_release, args=(key, acquired_at))
        waiter.start()
        _until_sync(lambda: self.waiter_is_waiting(key))
        time.sleep(pause)
        released_at = time.perf_counter()
        self.release(held)
        waiter.join(WAIT_TIMEOUT + 1)
        if not acquired_at:
            raise RuntimeError(f"{self.name}: the waiter did not acquire {key!r}")
        return acquired_at[0] - released_at

    def _wait_then_release(self, key: str, acquired_at: list[float]) -> None:
        handle = self.acquire_waiting(key)
        acquired_at.append(time.perf_counter())
        self.release(handle)


async def _until_async(check: Callable[[], Awaitable[bool]]) -> None:
    deadline = time.perf_counter() + READY_TIMEOUT
    while not await check():
        if time.perf_counter() > deadline:
            raise RuntimeError("the waiter never started waiting")
        await asyncio.sleep(0.0005)


def _until_sync(check: Callable[[], bool]) -> None:
    deadline = time.perf_counter() + READY_TIMEOUT
    while not check():
        if time.perf_counter() > deadline:
            raise RuntimeError("the waiter never started waiting")
        time.sleep(0.0005)


# --- the four locks ---------------------------------------------------------------------


class LeaseStack:
    """A LeaseManager with its own client and pub/sub hub, as one worker process has."""

    def __init__(self, url: str) -> None:
        self.redis = create_redis(Settings(redis_url=url))
        self.hub = PubSubHub(self.redis)
        self.manager = LeaseManager(
            self.redis,
            LeaseScripts.register(self.redis),
            self.hub,
            ttl=LOCK_TTL,
            heartbeat_interval=LOCK_TTL / 3,
            metrics=Metrics(),
        )

    def start(self) -> LeaseStack:
        self.hub.start()
        return self

    async def close(self) -> None:
        await self.hub.close()
        await self.redis.aclose()


class LeasegateSubject(AsyncLockSubject[Lease]):
    name = "leasegate lease"

    def __init__(self, holder: LeaseStack, waiter: LeaseStack, admin: AsyncRedis) -> None:
        self._holder = holder
        self._waiter = waiter
        self._admin = admin

    @classmethod
    async def create(cls, url: str) -> LeasegateSubject:
        holder = LeaseStack(url).start()
        waiter = LeaseStack(url).start()
        return cls(holder, waiter, AsyncRedis.from_url(url))

    async def acquire_now(self, key: str) -> Lease:
        lease = await self._holder.manager.acquire(key)
        if lease is None:
            raise RuntimeError(f"lease {key!r} is held")
        return lease

    async def acquire_waiting(self, key: str) -> Lease:
        return await self._waiter.manager.wait_acquire(key, timeout=WAIT_TIMEOUT)

    async def release(self, handle: Lease) -> None:
        # Both managers release with the same script; the holder's is as good as any.
        await self._holder.manager.release(handle)

    async def waiter_is_waiting(self, key: str) -> bool:
        channel = lease_keys(key).channel
        [(_, subscribers)] = await self._admin.pubsub_numsub(channel)
        return int(subscribers) > 0

    async def close(self) -> None:
        await self._holder.close()
        await self._waiter.close()
        await self._admin.aclose()


class RedisPyAsyncSubject(AsyncLockSubject[AsyncRedisLock]):
    name = "redis-py asyncio Lock"
    poll_interval = 0.1  # Lock's default `sleep` between two attempts

    def __init__(self, url: str) -> None:
        self._holder = AsyncRedis.from_url(url)
        self._waiter = AsyncRedis.from_url(url)

    async def acquire_now(self, key: str) -> AsyncRedisLock:
        lock = self._holder.lock(key, timeout=LOCK_TTL)
        if not await lock.acquire(blocking=False):
            raise RuntimeError(f"lock {key!r} is held")
        return lock

    async def acquire_waiting(self, key: str) -> AsyncRedisLock:
        lock = self._waiter.lock(key, timeout=LOCK_TTL)
        if not await lock.acquire(blocking=True, blocking_timeout=WAIT_TIMEOUT):
            raise RuntimeError(f"lock {key!r} not acquired in {WAIT_TIMEOUT}s")
        return lock

    async def release(self, handle: AsyncRedisLock) -> None:
        await handle.release()

    async def close(self) -> None:
        await self._holder.aclose()
        await self._waiter.aclose()


class PythonRedisLockSubject(SyncLockSubject[redis_lock.Lock]):
    name = "python-redis-lock"

    def __init__(self, url: str) -> None:
        self._holder = redis.Redis.from_url(url)
        self._waiter = redis.Redis.from_url(url)
        self._admin = redis.Redis.from_url(url)

    def acquire_now(self, key: str) -> redis_lock.Lock:
        lock = redis_lock.Lock(self._holder, key, expire=int(LOCK_TTL))
        if not lock.acquire(blocking=False):
            raise RuntimeError(f"lock {key!r} is held")
        return lock

    def acquire_waiting(self, key: str) -> redis_lock.Lock:
        lock = redis_lock.Lock(self._waiter, key, expire=int(LOCK_TTL))
        if not lock.acquire(blocking=True, timeout=WAIT_TIMEOUT):
            raise RuntimeError(f"lock {key!r} not acquired in {WAIT_TIMEOUT}s")
        return lock

    def release(self, handle: redis_lock.Lock) -> None:
        handle.release()

    def waiter_is_waiting(self, key: str) -> bool:
        # The waiter blocks in BLPOP on the lock's signal list.
        return int(self._admin.info("clients")["blocked_clients"]) > 0

    async def close(self) -> None:
        for client in (self._holder, self._waiter, self._admin):
            client.close()


class PotteryRedlockSubject(SyncLockSubject[Redlock]):
    name = "pottery Redlock"
    poll_interval = 0.2  # Redlock sleeps a random 0-0.2 s between two attempts

    def __init__(self, url: str) -> None:
        self._holder = redis.Redis.from_url(url)
        self._waiter = redis.Redis.from_url(url)

    def acquire_now(self, key: str) -> Redlock:
        lock = Redlock(key=key, masters={self._holder}, auto_release_time=LOCK_TTL)
        if not lock.acquire(blocking=False):
            raise RuntimeError(f"lock {key!r} is held")
        return lock

    def acquire_waiting(self, key: str) -> Redlock:
        lock = Redlock(key=key, masters={self._waiter}, auto_release_time=LOCK_TTL)
        if not lock.acquire(blocking=True, timeout=WAIT_TIMEOUT):
            raise RuntimeError(f"lock {key!r} not acquired in {WAIT_TIMEOUT}s")
        return lock

    def release(self, handle: Redlock) -> None:
        handle.release()

    async def close(self) -> None:
        self._holder.close()
        self._waiter.close()


# --- measuring --------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    round_rates: list[float] = field(default_factory=list)
    handoffs: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def pairs_per_s(self) -> float:
        return statistics.median(self.round_rates)

    def handoff_ms(self, percentile: int) -> float:
        cuts = statistics.quantiles(self.handoffs, n=100, method="inclusive")
        return cuts[percentile - 1] * 1000


async def _guarded(result: Result, step: Callable[..., Awaitable[object]], *args: object) -> None:
    """Run one measurement step; a failing lock is reported as n/a instead of ending the run."""
    if result.error is not None:
        return
    try:
        await step(*args)
    except Exception as exc:
        while isinstance(exc, ExceptionGroup):  # from the hand-off lanes' task group
            exc = exc.exceptions[0]
        result.error = f"{type(exc).__name__}: {exc}"


async def _pairs_round(subject: LockSubject, result: Result) -> None:
    elapsed = await subject.run_pairs(_key(subject, "pairs"), PAIRS_PER_ROUND)
    result.round_rates.append(PAIRS_PER_ROUND / elapsed)


async def _handoffs(subject: LockSubject, result: Result, rng: random.Random) -> None:
    """HANDOFFS samples. A polling waiter mostly sleeps and its hand-off is its poll
    interval's doing, so such a lock is measured on several keys at once to save time."""
    lanes = POLLING_LANES if subject.poll_interval > 0 else 1

    async def lane(key: str) -> None:
        for _ in range(HANDOFFS // lanes):
            pause = SETTLE + rng.uniform(0, subject.poll_interval)
            result.handoffs.append(await subject.handoff(key, pause))

    async with asyncio.TaskGroup() as group:
        for number in range(lanes):
            group.create_task(lane(_key(subject, f"handoff{number}")))


def _key(subject: LockSubject, purpose: str) -> str:
    return f"bench.{purpose}.{subject.name.replace(' ', '-')}"


async def measure(subjects: list[LockSubject]) -> list[Result]:
    results = [Result(subject.name) for subject in subjects]
    pairs = list(zip(subjects, results, strict=True))
    for subject, result in pairs:
        await _guarded(result, subject.run_pairs, _key(subject, "pairs"), WARMUP_PAIRS)
    for _ in range(ROUNDS):
        for subject, result in pairs:
            await _guarded(result, _pairs_round, subject, result)
    rng = random.Random(20240601)
    for subject, result in pairs:
        started = time.perf_counter()
        await _guarded(result, _handoffs, subject, result, rng)
        print(f"  hand-off {subject.name}: {time.perf_counter() - started:.1f} s", flush=True)
    return results


async def create_subjects(url: str) -> list[LockSubject]:
    return [
        await LeasegateSubject.create(url),
        RedisPyAsyncSubject(url),
        PythonRedisLockSubject(url),
        PotteryRedlockSubject(url),
    ]


async def run(url: str) -> list[Result]:
    subjects = await create_subjects(url)
    try:
        return await measure(subjects)
    finally:
        for subject in subjects:
            await subject.close()


# --- reporting --------------------------------------------------------------------------


def machine(url: str) -> str:
    client = redis.Redis.from_url(url)
    try:
        redis_version = client.info("server")["redis_version"]
    finally:
        client.close()
    return (
        f"{platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"redis-server {redis_version} on loopback"
    )


def table(results: list[Result]) -> str:
    rows = []
    for result in results:
        if result.error is not None:
            rows.append([f"{result.name} (n/a: {result.error})", "n/a", "n/a", "n/a"])
            continue
        rows.append(
            [
                result.name,
                f"{result.pairs_per_s:,.0f}",
                f"{result.handoff_ms(50):.2f}",
                f"{result.handoff_ms(99):.2f}",
            ]
        )
    return markdown_table(["lock", "pairs/s", "hand-off p50 ms", "hand-off p99 ms"], rows)


def verdict(results: list[Result]) -> str:
    by_name = {result.name: result for result in results}
    ours, baseline = by_name[LeasegateSubject.name], by_name[RedisPyAsyncSubject.name]
    if ours.error is not None or baseline.error is not None:
        return "The targets could not be checked: a lock failed (see the table)."
    pairs_met = ours.pairs_per_s >= baseline.pairs_per_s
    p99 = ours.handoff_ms(99)
    p99_met = p99 < HANDOFF_P99_TARGET_MS
    return (
        "Targets for leasegate's lease: at least as many pairs/s as redis-py's asyncio Lock "
        f"({ours.pairs_per_s:,.0f} vs {baseline.pairs_per_s:,.0f}: "
        f"{'met' if pairs_met else 'missed'}), and a hand-off p99 under "
        f"{HANDOFF_P99_TARGET_MS:g} ms ({p99:.2f} ms: {'met' if p99_met else 'missed'})."
    )


def section(results: list[Result], machine_line: str, date: str) -> str:
    method = (
        f"Pairs/s: one client acquires and releases one key, {WARMUP_PAIRS} warm-up pairs, "
        f"then {ROUNDS} rounds of {PAIRS_PER_ROUND} pairs interleaved across the locks; "
        f"the median round. Hand-off: {HANDOFFS} times, a holder releases while a waiter "
        "on another connection (an asyncio task, or a thread for the synchronous locks) is "
        f"blocked in a blocking acquire (timeout {WAIT_TIMEOUT} s); time from just before "
        "the release until the waiter's acquire returns. Polling waiters (redis-py: `sleep` "
        "0.1 s, pottery: random up to 0.2 s) are released at a random point of that interval, "
        f"on {POLLING_LANES} keys at once."
    )
    return "\n\n".join(
        [
            f"- Machine: {machine_line}\n- Date: {date}",
            table(results).rstrip("\n"),
            method,
            verdict(results),
        ]
    )


def main() -> None:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="leasegate-bench-") as data_dir:
        server = RedisServer(Path(data_dir), appendonly=False).start()
        try:
            print(f"redis-server on {server.url}", flush=True)
            results = asyncio.run(run(server.url))
            machine_line = machine(server.url)
        finally:
            server.stop()
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = section(results, machine_line, date)
    path = write_section(SECTION, body)
    print(f"\n{SECTION}\n\n{body}\n")
    print(f"written to {path} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
