"""The session scripts directly: fencing of a stale holder, exactly-once terminal status."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from app.connections import create_redis
from app.errors import LeaseNotOwnedError
from app.locks import Lease
from app.redis_server import RedisServer
from app.sessions.models import BusyPolicy, NewRun, RunStatus
from app.sessions.scripts import SessionScripts
from app.sessions.store import Finished, SessionRef, SessionStore
from tests.conftest import make_settings


@pytest.fixture
async def store(redis: Redis, redis_server: RedisServer) -> AsyncIterator[SessionStore]:
    client = create_redis(make_settings(redis_server.url))
    yield SessionStore(client, SessionScripts.register(client), lease_ttl=5.0,
                       retention_seconds=3600, queue_cap=10, worker="test")  # fmt: skip
    await client.aclose()


def message(text: str) -> NewRun:
    return NewRun(text=text, agent_id="echo", busy_policy=BusyPolicy.ENQUEUE)


async def started(store: SessionStore, session: SessionRef, text: str) -> tuple[Lease, str]:
    admission = await store.admit(session, message(text))
    assert admission.start is not None
    hold = admission.start
    lease = Lease(session.keys.lease, hold.token, hold.fence, 5.0, hold.granted_at + 5.0)
    return lease, hold.first_run.run_id


async def test_a_reset_holder_can_write_nothing(store: SessionStore) -> None:
    session = SessionRef.of("t", "s")
    lease, run_id = await started(store, session, "old")
    queued = (await store.admit(session, message("queued"))).run_id
    generation, cancelled = await store.reset(session)
    assert generation == 2 and sorted(cancelled) == sorted([run_id, queued])
    run = await store.get_run(session, run_id)
    with pytest.raises(LeaseNotOwnedError):
        await store.finish(
            session, lease, run, Finished(RunStatus.COMPLETED, "late"), release=False
        )
    with pytest.raises(LeaseNotOwnedError):
        await store.renew(session, lease)
    after = await store.get_run(session, run_id)
    assert after.status == RunStatus.CANCELLED and after.output is None
    assert await store.transcript_turns(session, 1) == []
    fresh, _ = await started(store, session, "new")  # the next message runs at once
    assert fresh.fence > lease.fence


async def test_an_expired_holder_is_fenced_out_by_its_successor(
    store: SessionStore, redis: Redis
) -> None:
    session = SessionRef.of("t", "s")
    lease, run_id = await started(store, session, "first")
    await redis.delete(session.keys.lease.lease)  # as if the TTL ran out
    successor, _ = await started(store, session, "second")
    assert successor.fence == lease.fence + 1
    assert (await store.get_run(session, run_id)).status == RunStatus.LOST
    run = await store.get_run(session, run_id)
    with pytest.raises(LeaseNotOwnedError):
        await store.finish(session, lease, run, Finished(RunStatus.COMPLETED, "x"), release=False)
    assert (await store.get_run(session, run_id)).status == RunStatus.LOST


async def test_finish_pops_the_next_run_or_releases(store: SessionStore, redis: Redis) -> None:
    session = SessionRef.of("t", "s")
    lease, run_id = await started(store, session, "one")
    second = (await store.admit(session, message("two"))).run_id
    run = await store.get_run(session, run_id)
    next_run = await store.finish(session, lease, run, Finished(RunStatus.COMPLETED, "1"),
                                  release=False)  # fmt: skip
    assert next_run is not None and next_run.run_id == second
    assert next_run.status == RunStatus.RUNNING and next_run.fence == lease.fence
    assert await store.finish(session, lease, next_run, Finished(RunStatus.COMPLETED, "2"),
                              release=False) is None  # fmt: skip
    assert await redis.exists(session.keys.lease.lease) == 0
