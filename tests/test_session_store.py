"""The session scripts directly: fencing of a stale holder, exactly-once terminal status."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from app.errors import LeaseNotOwnedError
from app.locks import Lease
from app.redis import create_redis
from app.redis.server import RedisServer
from app.sessions.models import BusyPolicy, NewRun, RunStatus, StartedHold
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
    after = await store.finish(session, lease, run, Finished(RunStatus.COMPLETED, "1"),
                               release=False)  # fmt: skip
    next_run = after.next_run
    assert next_run is not None and next_run.run_id == second
    assert next_run.status == RunStatus.RUNNING and next_run.fence == lease.fence
    last = await store.finish(session, lease, next_run, Finished(RunStatus.COMPLETED, "2"),
                              release=False)  # fmt: skip
    assert last.next_run is None and last.queued == 0
    assert await redis.exists(session.keys.lease.lease) == 0


async def test_release_on_shutdown_leaves_the_queue_and_says_so(store: SessionStore) -> None:
    session = SessionRef.of("t", "s")
    lease, run_id = await started(store, session, "one")
    queued = (await store.admit(session, message("two"))).run_id
    run = await store.get_run(session, run_id)
    after = await store.finish(session, lease, run, Finished(RunStatus.INTERRUPTED, "par"),
                               release=True)  # fmt: skip
    assert after.next_run is None and after.queued == 1
    assert (await store.get_run(session, queued)).status == RunStatus.QUEUED
    recovered = await store.recover(session)  # any worker can now take it, at once
    assert isinstance(recovered, StartedHold)
    assert recovered.first_run.run_id == queued and recovered.fence == lease.fence + 1
    assert await store.recover(session) is True  # held now


async def test_recover_ends_a_lost_run_or_runs_it_once_more(
    store: SessionStore, redis: Redis, redis_server: RedisServer
) -> None:
    session = SessionRef.of("t", "lost")
    _, run_id = await started(store, session, "in flight")
    assert await store.recover(session) is True  # the holder's lease is alive
    await redis.delete(session.keys.lease.lease)  # the holder died; its lease expired
    assert await store.recover(session) is None  # nothing else to do: the run is now lost
    assert (await store.get_run(session, run_id)).status == RunStatus.LOST

    client = create_redis(make_settings(redis_server.url))
    retrying = SessionStore(client, SessionScripts.register(client), lease_ttl=5.0,
                            retention_seconds=3600, queue_cap=10, worker="w2",
                            retry_lost=True)  # fmt: skip
    again = SessionRef.of("t", "retried")
    _, first = await started(retrying, again, "in flight")
    await redis.delete(again.keys.lease.lease)
    hold = await retrying.recover(again)
    assert isinstance(hold, StartedHold) and hold.first_run.run_id == first
    await redis.delete(again.keys.lease.lease)  # lost a second time: no third attempt
    assert await retrying.recover(again) is None
    assert (await retrying.get_run(again, first)).status == RunStatus.LOST
    await client.aclose()


async def test_a_re_sent_admission_answers_as_the_first_did(
    store: SessionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client library re-sends a script whose reply was lost; nothing may double."""
    session = SessionRef.of("t", "replay")
    monkeypatch.setattr("app.sessions.store.new_run_id", lambda *_: "fixed-run")
    monkeypatch.setattr("app.sessions.store.secrets.token_hex", lambda _: "fixed-token")
    first = await store.admit(session, message("once"))
    again = await store.admit(session, message("once"))
    assert first.start is not None and again.start is not None
    assert again.start.first_run.run_id == "fixed-run" and again.start.fence == first.start.fence
    monkeypatch.setattr("app.sessions.store.new_run_id", lambda *_: "queued-run")
    monkeypatch.setattr("app.sessions.store.secrets.token_hex", lambda _: "another-token")
    queued = await store.admit(session, message("second"))
    queued_again = await store.admit(session, message("second"))
    assert (queued.status, queued.queue_position) == (RunStatus.QUEUED, 1)
    assert (queued_again.status, queued_again.queue_position) == (RunStatus.QUEUED, 1)
    assert (await store.view(session)).queued == ["queued-run"]


async def test_a_re_sent_finish_does_not_take_a_second_run(store: SessionStore) -> None:
    session = SessionRef.of("t", "replay-finish")
    lease, run_id = await started(store, session, "one")
    second = (await store.admit(session, message("two"))).run_id
    third = (await store.admit(session, message("three"))).run_id
    run = await store.get_run(session, run_id)
    outcome = Finished(RunStatus.COMPLETED, "1")
    after = await store.finish(session, lease, run, outcome, release=False)
    again = await store.finish(session, lease, run, outcome, release=False)
    assert after.next_run is not None and again.next_run is not None
    assert after.next_run.run_id == again.next_run.run_id == second
    assert (await store.view(session)).queued == [third]
