"""Capacity slots (a fenced counting semaphore) against a real redis-server: grants up to
the cap, fair-share grant order, wake-ups, expiry of a dead holder, start deadlines, the
heartbeat, scripts answering re-sends, and 8 processes contending for 3 slots."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from redis.asyncio import Redis

from app.errors import LeaseLostError, LeaseNotOwnedError, RunExpiredError
from app.keys import slot_keys
from app.locks import slot_scripts
from app.locks.slot_scripts import Claim, SlotCode, SlotScripts
from app.locks.slots import Slot, SlotHeartbeat, SlotManager
from app.redis import create_redis
from app.redis.pubsub import PubSubHub
from app.redis.server import RedisServer
from tests.support.faultproxy import FaultProxy, evalsha_of
from tests.support.settings import make_settings
from tests.support.slot_contention import contend, load_holds, most_at_once
from tests.support.topologies import LocalRedisCluster
from tests.support.waiting import wait_until

RESOURCE = "a:agent"


@asynccontextmanager
async def slot_manager(
    url: str, *, ttl: float = 2.0, heartbeat: float = 5.0, scripts: SlotScripts | None = None
) -> AsyncIterator[SlotManager]:
    """A SlotManager with its own client and pub/sub, as one worker has. The long default
    heartbeat (the waiters' refresh) shows that wake-ups, not re-checks, hand slots over."""
    redis = create_redis(make_settings(url))
    hub = PubSubHub(redis)
    hub.start()
    scripts = scripts or SlotScripts.register(redis)
    for script in scripts.all():  # loaded, as readiness does: a fault then hits the script
        await redis.script_load(script.script)
    try:
        yield SlotManager(redis, scripts, hub, ttl=ttl, heartbeat_interval=heartbeat)
    finally:
        await hub.close()
        await redis.aclose()


def claim(run: str, tenant: str = "acme", priority: int = 5, start_by: int | None = None) -> Claim:
    return Claim(run, tenant, "worker-1", priority, start_by)


async def granted(manager: SlotManager, run: str, cap: int, tenant: str = "acme") -> Slot:
    slot, reply = await manager.try_acquire(RESOURCE, cap, claim(run, tenant))
    assert slot is not None, reply
    return slot


async def held(redis: Redis, resource: str = RESOURCE) -> int:
    return int(await redis.zcard(slot_keys(resource).holders))


async def test_grants_up_to_the_cap_and_fences_rise(
    redis: Redis, redis_server: RedisServer
) -> None:
    async with slot_manager(redis_server.url) as slots:
        first = await granted(slots, "r1", 2)
        second = await granted(slots, "r2", 2)
        third, reply = await slots.try_acquire(RESOURCE, 2, claim("r3"))
        assert third is None and reply.code == SlotCode.WAIT
        assert second.fence == first.fence + 1
        assert await held(redis) == 2
        await slots.release(first)
        with pytest.raises(LeaseNotOwnedError):
            await slots.renew(first)
        await slots.release(second)
        assert await held(redis) == 0


async def test_a_release_wakes_the_next_waiter_at_once(
    redis: Redis, redis_server: RedisServer
) -> None:
    async with slot_manager(redis_server.url) as slots:
        holder = await granted(slots, "r1", 1)
        waiting = asyncio.create_task(slots.acquire(RESOURCE, 1, claim("r2")))
        await wait_until(lambda: _queued(redis, 1), 2, "the waiter to queue")
        released = time.monotonic()
        await slots.release(holder)
        slot = await asyncio.wait_for(waiting, 2)
        # Refresh is every 5 s: only the wake-up can explain a hand-off this quick.
        assert time.monotonic() - released < 1.0
        assert slot.fence == holder.fence + 1
        await slots.release(slot)


async def test_grant_order_fewest_holders_of_the_tenant_then_priority_then_arrival(
    redis: Redis, redis_server: RedisServer
) -> None:
    async with slot_manager(redis_server.url) as slots:
        x = await granted(slots, "x", 2, tenant="acme")
        y = await granted(slots, "y", 2, tenant="acme")
        waiters = {
            "a1": claim("a1", "acme", 5),
            "a2": claim("a2", "acme", 9),
            "b1": claim("b1", "globex", 5),
            "b2": claim("b2", "globex", 1),
        }
        tokens = {run: f"token-{run}" for run in waiters}
        for run, asked in waiters.items():
            slot, _ = await slots.try_acquire(RESOURCE, 2, asked, tokens[run])
            assert slot is None
        order: list[str] = []
        to_release = [x, y]
        while waiters:
            await slots.release(to_release.pop(0))
            winners = []
            for run in list(waiters):
                slot, _ = await slots.try_acquire(RESOURCE, 2, waiters[run], tokens[run])
                if slot is not None:
                    winners.append(run)
                    to_release.append(slot)
                    del waiters[run]
            assert len(winners) == 1, winners
            order += winners
        # x frees: globex holds none, acme two -> b1 (priority 5 over b2's 1); y frees:
        # acme holds none -> a2 (priority 9); then globex (b2), then acme (a1).
        assert order == ["b1", "a2", "b2", "a1"]
        for slot in to_release:
            await slots.release(slot)


async def test_a_dead_holders_slot_frees_when_its_hold_expires(
    redis: Redis, redis_server: RedisServer
) -> None:
    async with (
        slot_manager(redis_server.url, ttl=0.4) as dead,
        slot_manager(redis_server.url) as alive,
    ):
        await granted(dead, "dead", 1)  # never renewed, never released
        started = time.monotonic()
        slot = await asyncio.wait_for(alive.acquire(RESOURCE, 1, claim("next")), 3)
        # No sweeper and no release: the waiter re-checks when the hold can have expired.
        assert 0.2 < time.monotonic() - started < 1.5
        await alive.release(slot)
        assert await held(redis) == 0


async def test_a_waiter_past_its_start_deadline_expires_and_leaves(
    redis: Redis, redis_server: RedisServer
) -> None:
    async with slot_manager(redis_server.url) as slots:
        holder = await granted(slots, "r1", 1)
        seconds, micros = await redis.time()
        start_by = seconds * 1_000_000 + micros + 300_000
        started = time.monotonic()
        with pytest.raises(RunExpiredError):
            await slots.acquire(RESOURCE, 1, claim("late", start_by=start_by))
        assert 0.2 < time.monotonic() - started < 2
        assert await redis.hlen(slot_keys(RESOURCE).queue) == 0
        await slots.release(holder)


async def test_a_cancelled_waiter_leaves_the_queue(redis: Redis, redis_server: RedisServer) -> None:
    async with slot_manager(redis_server.url) as slots:
        holder = await granted(slots, "r1", 1)
        waiting = asyncio.create_task(slots.acquire(RESOURCE, 1, claim("r2")))
        await wait_until(lambda: _queued(redis, 1), 2, "the waiter to queue")
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert await redis.hlen(slot_keys(RESOURCE).queue) == 0
        await slots.release(holder)
        assert await held(redis) == 0


async def test_heartbeat_keeps_slots_and_reports_one_that_is_lost(
    redis: Redis, redis_server: RedisServer
) -> None:
    async with slot_manager(redis_server.url, ttl=0.6, heartbeat=0.15) as slots:
        kept = await granted(slots, "kept", 2)
        doomed = await granted(slots, "doomed", 2)
        lost: list[tuple[Slot, LeaseLostError]] = []
        heartbeat = SlotHeartbeat(slots, 0.15, lambda slot, error: lost.append((slot, error)))
        heartbeat.add(kept)
        heartbeat.add(doomed)
        await asyncio.sleep(1.2)  # two TTLs: only renewals keep them
        assert await held(redis) == 2 and not lost
        await redis.zrem(slot_keys(RESOURCE).holders, doomed.token)
        await wait_until(lambda: _true(bool(lost)), 2, "the loss to be noticed")
        assert lost[0][0] is doomed and heartbeat.slots == [kept]
        await heartbeat.stop()
        await slots.release(kept)


def test_keys_of_one_resource_share_one_hash_slot() -> None:
    keys = slot_keys("sub:sub-a")
    tags = {key.split("{")[1].split("}")[0] for key in keys.all}
    assert tags == {"c:sub:sub-a"}


async def test_slots_work_on_a_cluster(clean_cluster: LocalRedisCluster) -> None:
    url = clean_cluster.url
    async with slot_manager(url) as slots:
        first, _ = await slots.try_acquire("t:acme", 1, claim("r1"))
        assert first is not None
        waiting = asyncio.create_task(slots.acquire("t:acme", 1, claim("r2")))
        await asyncio.sleep(0)
        await slots.renew(first)
        await slots.release(first)
        second = await asyncio.wait_for(waiting, 3)
        await slots.release(second)


# --- every script answers a re-send as it answered the first call ------------------------


@asynccontextmanager
async def proxied(server: RedisServer) -> AsyncIterator[tuple[FaultProxy, SlotManager]]:
    """A SlotManager whose Redis is behind a fault-injecting proxy."""
    async with (
        FaultProxy("127.0.0.1", server.port) as proxy,
        slot_manager(proxy.url) as slots,
    ):
        yield proxy, slots


VARIANTS = pytest.mark.parametrize("broken", [False, True], ids=["script", "broken-variant"])


def _break(monkeypatch: pytest.MonkeyPatch, name: str, old: str, new: str) -> None:
    text: str = getattr(slot_scripts, name)
    assert old in text, f"{name} no longer contains the part the broken variant changes"
    monkeypatch.setattr(slot_scripts, name, text.replace(old, new))


@VARIANTS
async def test_acquire_resent_after_its_grant_answers_the_grant(
    own_redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, broken: bool
) -> None:
    if broken:  # no memory of the grant: the re-send queues behind its own slot
        _break(monkeypatch, "ACQUIRE", "if mine then return", "if false then return")
    async with proxied(own_redis_server) as (proxy, slots):
        fault = proxy.drop_reply(evalsha_of(slots.scripts.acquire.sha))
        slot, reply = await slots.try_acquire(RESOURCE, 1, claim("r1"))
        assert fault.fired.is_set()
        redis = Redis.from_url(own_redis_server.url)
        try:
            outcome = (slot is not None, await held(redis), await redis.hlen(_queue()))
        finally:
            await redis.aclose()
    if broken:
        assert outcome != (True, 1, 0)
    else:
        assert outcome == (True, 1, 0), reply


@VARIANTS
async def test_release_resent_after_it_freed_the_slot_answers_ok(
    own_redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, broken: bool
) -> None:
    if broken:  # no memory of its own release: the re-send finds nothing and says so
        _break(monkeypatch, "RELEASE", "if redis.call('ZSCORE', KEYS[7], token)", "if false")
    async with proxied(own_redis_server) as (proxy, slots):
        slot = await granted(slots, "r1", 1)
        fault = proxy.drop_reply(evalsha_of(slots.scripts.release.sha))
        try:
            await slots.release(slot)
            refused = False
        except LeaseNotOwnedError:
            refused = True
        assert fault.fired.is_set()
        again = await granted(slots, "r2", 1)  # the slot is free either way
        await slots.release(again)
    assert refused == broken


@VARIANTS
async def test_renew_resent_answers_ok_and_never_revives_a_released_slot(
    own_redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, broken: bool
) -> None:
    if broken:  # no ownership check: a late renewal of a released slot is "ok"
        _break(
            monkeypatch, "RENEW", "if redis.call('ZSCORE', KEYS[1], ARGV[1]) then", "if true then"
        )
    async with proxied(own_redis_server) as (proxy, slots):
        slot = await granted(slots, "r1", 1)
        fault = proxy.drop_reply(evalsha_of(slots.scripts.renew.sha))
        await slots.renew(slot)  # executed, reply lost, re-sent: ok both times
        assert fault.fired.is_set()
        await slots.release(slot)
        try:
            await slots.renew(slot)
            late = "ok"
        except LeaseNotOwnedError:
            late = "not_owned"
        redis = Redis.from_url(own_redis_server.url)
        try:
            outcome = (late, await held(redis))
        finally:
            await redis.aclose()
    if broken:
        assert outcome != ("not_owned", 0)
    else:
        assert outcome == ("not_owned", 0)


# --- many processes ------------------------------------------------------------------------

PROCESSES = 8
CAP = 3


def run_contention(server: RedisServer, tmp_path: Path, *, broken: bool, duration: float) -> int:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(PROCESSES)
    outputs = [tmp_path / f"holds-{i}.json" for i in range(PROCESSES)]
    workers = [
        context.Process(target=contend, args=(server.url, CAP, duration, str(out), broken, barrier))
        for out in outputs
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0, f"contender exited with {worker.exitcode}"
    holds = load_holds(outputs)
    assert len(holds) > 100, f"too little contention to judge: {len(holds)} holds"
    assert len({fence for fence, _, _ in holds}) == len(holds), "a fence was granted twice"
    return most_at_once(holds)


@pytest.mark.multiprocess
def test_processes_never_hold_more_than_the_cap(redis_server: RedisServer, tmp_path: Path) -> None:
    assert 1 < run_contention(redis_server, tmp_path, broken=False, duration=2.0) <= CAP


@pytest.mark.multiprocess
def test_checker_catches_a_grant_that_ignores_the_cap(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    assert run_contention(redis_server, tmp_path, broken=True, duration=0.5) > CAP


async def _queued(redis: Redis, count: int) -> bool:
    return int(await redis.hlen(_queue())) == count


def _queue() -> str:
    return slot_keys(RESOURCE).queue


async def _true(value: bool) -> bool:
    return value
