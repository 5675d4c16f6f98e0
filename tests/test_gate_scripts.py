"""The reload gate's scripts and the re-queue scripts, called directly on a real
redis-server: each answers a re-sent call (redis-py sends the same EVALSHA again when a
reply was lost) as it answered the first, and writes nothing twice. Each check also runs
against a deliberately broken variant (the replay guard removed) and must catch it."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
from redis.asyncio import Redis

from app.keys import agent_keys
from app.locks import Lease
from app.redis import as_text, create_redis
from app.redis.server import RedisServer
from app.sessions import requeue
from app.sessions.admission import Admissions
from app.sessions.ids import new_run_id
from app.sessions.lua import Limits
from app.sessions.models import BusyPolicy, NewRun, RunStatus
from app.sessions.reads import Reads
from app.sessions.ref import SessionRef
from app.sessions.requeue import Requeues
from app.sessions.writes import AfterFinish, Finished
from app.subscriptions import gate_scripts
from app.subscriptions.gate_scripts import GateCode, GateScripts
from tests.support.settings import make_settings

TTL = 5.0
LIMITS = Limits(lease_ttl_ms=5000, retention_ms=3_600_000, queue_cap=10, retry_lost=False)
AGENT = "reloader"
PRIORITY = ("sub-a", "sub-b")
BROKEN = {
    "ENTER": ("if held then return {0, string.match(held, '^[^|]*')} end", ""),
    "CLOSE": ("if redis.call('GET', KEYS[4]) == ARGV[4] then", "if false then"),
    "NOTE": (
        "if tonumber(redis.call('HGET', KEYS[2], 'seq') or '0') >= tonumber(ARGV[2])",
        "if false",
    ),
    "COMMIT": ("if redis.call('HGET', KEYS[3], 'committed') == ARGV[2] then", "if false then"),
    "REQUEUE": ("if run and run.requeued_by == fence then", "if false then"),
}


@pytest.fixture
async def redis(own_redis_server: RedisServer) -> AsyncIterator[Redis]:
    """A redis-server of the test's own: the suite's long-lived servers sweep the suite's,
    and would take over the session these tests leave holderless."""
    client = create_redis(make_settings(own_redis_server.url))
    yield client
    await client.aclose()


def scripts(redis: Redis, broken: str | None, monkeypatch: pytest.MonkeyPatch) -> GateScripts:
    if broken is not None:
        old, new = BROKEN[broken]
        text = getattr(gate_scripts, broken)
        assert old in text
        monkeypatch.setattr(gate_scripts, broken, text.replace(old, new))
    return GateScripts.register(redis)


async def closed_gate(redis: Redis, gates: GateScripts) -> tuple[list[str], list[str | int]]:
    """A switch lease set by hand, and the keys and arguments of a CLOSE under it (sub-a to
    sub-b), so that a test can send it twice."""
    keys = agent_keys(AGENT)
    await redis.set(keys.lease.lease, "switch-token")
    await redis.set(keys.lease.fence, "7")
    close_keys = [
        keys.lease.lease,
        keys.lease.fence,
        keys.assignment,
        keys.gate.lease,
        keys.gate.fence,
        keys.gate_state,
        keys.events,
    ]
    args: list[str | int] = ["switch-token", "7", "", "gate-token", 5000, "sub-a", "sub-b"]
    args += ["auto", "rate_limit"]
    args += [AGENT, 1000, 120_000]
    return close_keys, args


async def event_types(redis: Redis) -> list[str]:
    entries = cast(
        list[tuple[bytes, dict[bytes, bytes]]], await redis.xrange(agent_keys(AGENT).events)
    )
    return [as_text(fields[b"type"]) for _, fields in entries]


@pytest.mark.parametrize("broken", [None, "ENTER"])
async def test_a_re_sent_enter_finds_its_entry_even_after_the_gate_closed(
    redis: Redis, broken: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    gates = scripts(redis, broken, monkeypatch)
    keys = agent_keys(AGENT)
    enter_keys = [keys.gate.lease, keys.assignment, keys.inflight]
    enter_args: list[str | int] = ["run-1/3", 5000, *PRIORITY]
    first = await gates.enter(keys=enter_keys, args=enter_args)
    await redis.set(keys.gate.lease, "gate-token")  # a switch closes the gate meanwhile
    again = await gates.enter(keys=enter_keys, args=enter_args)
    replayed = again == first and first[0] == GateCode.OK
    assert replayed is (broken is None), (first, again)
    assert await redis.hlen(keys.inflight) == 1


@pytest.mark.parametrize("broken", [None, "CLOSE", "NOTE"])
async def test_a_re_sent_close_or_note_answers_as_the_first_and_adds_one_event(
    redis: Redis, broken: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    gates = scripts(redis, broken, monkeypatch)
    close_keys, close_args = await closed_gate(redis, gates)
    first = await gates.close(keys=close_keys, args=close_args)
    again = await gates.close(keys=close_keys, args=close_args)
    keys = agent_keys(AGENT)
    note_keys = [keys.gate.lease, keys.gate_state, keys.events]
    note_args: list[str | int] = [
        "gate-token",
        1,
        "agent_reload_failed",
        AGENT,
        1000,
        "phase",
        "failed",
    ]
    noted = [await gates.note(keys=note_keys, args=note_args) for _ in range(2)]
    kinds = await event_types(redis)
    good = first == again == [GateCode.OK, 1] and noted == [1, 1]
    good = good and kinds == ["agent_gate_closed", "agent_reload_failed"]
    assert good is (broken is None), (first, again, noted, kinds)


@pytest.mark.parametrize("broken", [None, "COMMIT"])
async def test_a_re_sent_commit_answers_as_the_first_and_switches_once(
    redis: Redis, broken: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    gates = scripts(redis, broken, monkeypatch)
    close_keys, close_args = await closed_gate(redis, gates)
    assert (await gates.close(keys=close_keys, args=close_args))[0] == GateCode.OK
    keys = agent_keys(AGENT)
    commit_keys = [keys.gate.lease, keys.assignment, keys.gate_state, keys.events]
    commit_args: list[str | int] = [
        "gate-token",
        1,
        "sub-a",
        "sub-b",
        "auto",
        "rate_limit",
        AGENT,
        1000,
    ]
    commit_args += [keys.gate.channel, "1"]
    first = await gates.commit(keys=commit_keys, args=commit_args)
    again = await gates.commit(keys=commit_keys, args=commit_args)
    assert not await redis.exists(keys.gate.lease)  # the gate is open
    assert as_text(await redis.hget(keys.assignment, "subscription")) == "sub-b"
    kinds = await event_types(redis)
    good = first == again == [GateCode.OK, 1] and kinds.count("subscription_switched") == 1
    assert good is (broken is None), (first, again, kinds)


@pytest.mark.parametrize("broken", [None, "REQUEUE"])
async def test_a_re_sent_requeue_answers_as_the_first_and_starts_the_run_once(
    redis: Redis, broken: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if broken is not None:
        old, new = BROKEN[broken]
        monkeypatch.setattr(requeue, "REQUEUE", requeue.REQUEUE.replace(old, new))
    admissions = Admissions(redis, LIMITS, worker="w1")
    requeues, reads = Requeues(redis, LIMITS), Reads(redis)
    session = SessionRef.of("t", "requeued")

    async def admit(text: str) -> Any:
        new = NewRun(text=text, agent_id="echo", busy_policy=BusyPolicy.ENQUEUE)
        run_id = new_run_id(session.tenant, session.session_id)
        return await admissions.admit(session, new, run_id, secrets.token_hex(16))

    started = (await admit("one")).start
    second = (await admit("two")).run_id
    run = started.first_run
    fence = run.fence or 0
    lease = Lease(session.keys.lease, started.token, fence, TTL, started.granted_at + TTL)
    assert await requeues.request(session, run.run_id, fence, "drain_timeout")
    assert await requeues.request(session, run.run_id, fence, "drain_timeout")  # a re-send
    outcome = Finished(RunStatus.QUEUED, "partial", "run queued", "sub-a", reason="drain_timeout")
    first = await requeues.requeue(session, lease, run, outcome, release=False)
    lease.fence = fence  # as the holder sent it: the same arguments again
    again: AfterFinish | Exception
    try:
        again = await requeues.requeue(session, lease, run, outcome, release=False)
    except Exception as exc:  # the broken variant finds its fence stale
        again = exc
    view = await reads.view(session)
    events = cast(list[tuple[bytes, dict[bytes, bytes]]], await redis.xrange(session.keys.events))
    kinds = [as_text(fields[b"type"]) for _, fields in events]
    assert first.next_run is not None and first.next_run.run_id == run.run_id
    assert (first.next_run.fence or 0) > fence
    assert [r.run_id for r in view.queued] == [second]  # the run went back ahead of `two`
    good = again == first and kinds.count("requeued") == 1 and kinds.count("started") == 2
    assert good is (broken is None), (first, again, kinds)
