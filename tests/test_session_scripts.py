"""The session scripts called directly: fencing of stale holders, exactly one terminal
status, hand-over on shutdown, and recovery of a dead holder's run."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from redis.asyncio import Redis

from app.errors import LeaseNotOwnedError, RedisUnavailableError, SessionNotFoundError
from app.locks import Lease
from app.redis import create_redis
from app.redis.server import RedisServer
from app.sessions.admission import Admissions
from app.sessions.control import Control
from app.sessions.ids import new_run_id
from app.sessions.index import SessionIndex
from app.sessions.lua import Limits
from app.sessions.models import Admission, BusyPolicy, NewRun, RunStatus, StartedHold
from app.sessions.reads import Reads
from app.sessions.ref import SessionRef
from app.sessions.writes import Finished, HolderWrites
from tests.support.settings import make_settings

TTL = 5.0


@dataclass
class Stack:
    admissions: Admissions
    writes: HolderWrites
    control: Control
    reads: Reads
    index: SessionIndex

    async def admit(self, session: SessionRef, text: str) -> Admission:
        new = NewRun(text=text, agent_id="echo", busy_policy=BusyPolicy.ENQUEUE)
        run_id = new_run_id(session.tenant, session.session_id)
        return await self.admissions.admit(session, new, run_id, secrets.token_hex(16))

    async def started(self, session: SessionRef, text: str) -> tuple[Lease, str]:
        admission = await self.admit(session, text)
        assert admission.start is not None
        return lease_of(session, admission.start), admission.start.first_run.run_id


def lease_of(session: SessionRef, hold: StartedHold) -> Lease:
    fence = hold.first_run.fence or 0
    return Lease(session.keys.lease, hold.token, fence, TTL, hold.granted_at + TTL)


async def stack_for(url: str, *, retry_lost: bool = False) -> tuple[Stack, Redis]:
    client = create_redis(make_settings(url))
    limits = Limits(
        lease_ttl_ms=int(TTL * 1000), retention_ms=3_600_000, queue_cap=10, retry_lost=retry_lost
    )
    stack = Stack(
        Admissions(client, limits, worker="w1"),
        HolderWrites(client, limits),
        Control(client, limits),
        Reads(client),
        SessionIndex(client, limits, worker="w1"),
    )
    return stack, client


@pytest.fixture
async def redis(own_redis_server: RedisServer) -> AsyncIterator[Redis]:
    """A client of the test's own redis-server: on the suite's, the long-lived servers other
    tests start would sweep, and take over, the sessions these tests leave holderless."""
    client = Redis.from_url(own_redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
async def stack(redis: Redis, own_redis_server: RedisServer) -> AsyncIterator[Stack]:
    built, client = await stack_for(own_redis_server.url)
    yield built
    await client.aclose()


async def test_a_reset_holder_can_write_nothing(stack: Stack, redis: Redis) -> None:
    session = SessionRef.of("t", "s")
    lease, run_id = await stack.started(session, "old")
    queued = (await stack.admit(session, "queued")).run_id
    generation, cancelled = await stack.control.reset(session)
    assert generation == 2 and sorted(cancelled) == sorted([run_id, queued])
    run = await stack.reads.get_run(session, run_id)
    with pytest.raises(LeaseNotOwnedError):
        await stack.writes.finish(
            session, lease, run, Finished(RunStatus.COMPLETED, "late"), release=False
        )
    with pytest.raises(LeaseNotOwnedError):
        await stack.writes.emit(session, lease, run_id, 1, [("delta", "late")])
    after = await stack.reads.get_run(session, run_id)
    assert after.status == RunStatus.CANCELLED and after.output is None
    assert await stack.reads.history(session) == []
    fresh, _ = await stack.started(session, "new")  # the next message runs at once
    assert fresh.fence > lease.fence


async def test_an_expired_holder_is_fenced_out_by_its_successor(stack: Stack, redis: Redis) -> None:
    session = SessionRef.of("t", "s")
    lease, run_id = await stack.started(session, "first")
    await redis.hset(session.keys.state, "confirmed", run_id)  # its agent had started
    await redis.delete(session.keys.lease.lease)  # as if the TTL ran out
    successor, _ = await stack.started(session, "second")
    assert successor.fence == lease.fence + 1
    assert (await stack.reads.get_run(session, run_id)).status == RunStatus.LOST
    run = await stack.reads.get_run(session, run_id)
    with pytest.raises(LeaseNotOwnedError):
        await stack.writes.finish(
            session, lease, run, Finished(RunStatus.COMPLETED, "x"), release=False
        )
    assert (await stack.reads.get_run(session, run_id)).status == RunStatus.LOST


async def test_finish_starts_the_next_run_under_a_new_fence_or_releases(
    stack: Stack, redis: Redis
) -> None:
    session = SessionRef.of("t", "s")
    lease, run_id = await stack.started(session, "one")
    second = (await stack.admit(session, "two")).run_id
    run = await stack.reads.get_run(session, run_id)
    after = await stack.writes.finish(
        session, lease, run, Finished(RunStatus.COMPLETED, "1"), release=False
    )
    assert after.ended.status == RunStatus.COMPLETED and after.ended.output == "1"
    next_run = after.next_run
    assert next_run is not None and next_run.run_id == second
    assert next_run.status == RunStatus.RUNNING and next_run.fence == lease.fence + 1
    lease.fence = next_run.fence
    last = await stack.writes.finish(
        session, lease, next_run, Finished(RunStatus.COMPLETED, "2"), release=False
    )
    assert last.next_run is None and last.queued == 0
    assert await redis.exists(session.keys.lease.lease) == 0
    turns = [(t.role, t.text) for t in await stack.reads.history(session)]
    assert turns == [("user", "one"), ("assistant", "1"), ("user", "two"), ("assistant", "2")]


async def test_release_on_shutdown_leaves_the_queue_and_says_so(stack: Stack) -> None:
    session = SessionRef.of("t", "s")
    lease, run_id = await stack.started(session, "one")
    queued = (await stack.admit(session, "two")).run_id
    run = await stack.reads.get_run(session, run_id)
    after = await stack.writes.finish(
        session, lease, run, Finished(RunStatus.INTERRUPTED, "par"), release=True
    )
    assert after.next_run is None and after.queued == 1
    assert (await stack.reads.get_run(session, queued)).status == RunStatus.QUEUED
    [recovered] = await stack.index.recover([session])  # any worker can take it, at once
    assert isinstance(recovered, StartedHold)
    assert recovered.first_run.run_id == queued and recovered.first_run.fence == lease.fence + 1
    assert await stack.index.recover([session]) == [True]  # held now


async def test_recovery_restarts_a_run_that_never_started_and_ends_one_that_did(
    stack: Stack, redis: Redis, own_redis_server: RedisServer
) -> None:
    session = SessionRef.of("t", "lost")
    _, run_id = await stack.started(session, "granted, never started")
    assert await stack.index.recover([session]) == [True]  # the holder's lease is alive
    await redis.delete(session.keys.lease.lease)  # the worker died before starting it
    [again] = await stack.index.recover([session])
    assert isinstance(again, StartedHold) and again.first_run.run_id == run_id
    assert again.first_run.attempt == 2  # nothing of it ran: started once more
    await redis.hset(session.keys.state, "confirmed", run_id)  # this time its agent started
    await redis.delete(session.keys.lease.lease)  # and its worker died
    assert await stack.index.recover([session]) == [None]  # nothing else to do
    assert (await stack.reads.get_run(session, run_id)).status == RunStatus.LOST

    retrying, client = await stack_for(own_redis_server.url, retry_lost=True)
    other = SessionRef.of("t", "retried")
    _, first = await retrying.started(other, "in flight")
    await redis.hset(other.keys.state, "confirmed", first)
    await redis.delete(other.keys.lease.lease)
    [hold] = await retrying.index.recover([other])
    assert isinstance(hold, StartedHold) and hold.first_run.run_id == first
    await redis.hset(other.keys.state, "confirmed", first)
    await redis.delete(other.keys.lease.lease)  # lost a second time: no third attempt
    assert await retrying.index.recover([other]) == [None]
    assert (await retrying.reads.get_run(other, first)).status == RunStatus.LOST
    await client.aclose()


async def test_a_re_sent_admission_answers_as_the_first_did(stack: Stack) -> None:
    """The client library re-sends a script whose reply was lost; nothing may double."""
    session = SessionRef.of("t", "replay")
    new = NewRun(text="once", agent_id="echo", busy_policy=BusyPolicy.ENQUEUE)
    first = await stack.admissions.admit(session, new, "fixed-run", "fixed-token")
    again = await stack.admissions.admit(session, new, "fixed-run", "fixed-token")
    assert first.start is not None and again.start is not None
    assert again.start.first_run == first.start.first_run
    second = NewRun(text="second", agent_id="echo", busy_policy=BusyPolicy.ENQUEUE)
    queued = await stack.admissions.admit(session, second, "queued-run", "another-token")
    queued_again = await stack.admissions.admit(session, second, "queued-run", "another-token")
    assert (queued.status, queued.queue_position) == (RunStatus.QUEUED, 1)
    assert (queued_again.status, queued_again.queue_position) == (RunStatus.QUEUED, 1)
    assert [r.run_id for r in (await stack.reads.view(session)).queued] == ["queued-run"]


async def test_a_re_sent_finish_does_not_take_a_second_run(stack: Stack) -> None:
    session = SessionRef.of("t", "replay-finish")
    lease, run_id = await stack.started(session, "one")
    second = (await stack.admit(session, "two")).run_id
    third = (await stack.admit(session, "three")).run_id
    run = await stack.reads.get_run(session, run_id)
    outcome = Finished(RunStatus.COMPLETED, "1")
    after = await stack.writes.finish(session, lease, run, outcome, release=False)
    again = await stack.writes.finish(session, lease, run, outcome, release=False)
    assert after.next_run is not None and again.next_run is not None
    assert after.next_run.run_id == again.next_run.run_id == second
    assert after.ended == again.ended
    assert [r.run_id for r in (await stack.reads.view(session)).queued] == [third]


async def test_an_admission_resolved_before_it_ran_never_runs(stack: Stack) -> None:
    """Redis never ran an admission whose reply did not come: resolving it leaves a
    tombstone, so the call arriving late (or re-sent) admits nothing."""
    session = SessionRef.of("t", "late")
    new = NewRun(text="late", agent_id="echo", busy_policy=BusyPolicy.ENQUEUE)
    assert await stack.admissions.resolve(session, new, "late-run", "token") is None
    with pytest.raises(RedisUnavailableError):
        await stack.admissions.admit(session, new, "late-run", "token")
    with pytest.raises(SessionNotFoundError):  # no session was made: nothing half-written
        await stack.reads.view(session)
    made = await stack.admit(session, "retried")  # a retry (a new run id) is admitted
    assert made.start is not None and made.start.first_run.input == "retried"


async def test_an_admission_resolved_after_it_ran_stands(stack: Stack) -> None:
    session = SessionRef.of("t", "ran")
    new = NewRun(text="ran", agent_id="echo", busy_policy=BusyPolicy.ENQUEUE)
    first = await stack.admissions.admit(session, new, "ran-run", "token")
    resolved = await stack.admissions.resolve(session, new, "ran-run", "token")
    assert resolved is not None and resolved.start is not None and first.start is not None
    assert resolved.start.first_run == first.start.first_run
