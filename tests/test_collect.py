"""`busy_policy: collect`: a burst of messages becomes one run that receives all of them.

A message joins the session's last queued, not yet started collect run (up to 20); a
collect run starts no earlier than `collect_ms` after its last message joined and no later
than 10 x `collect_ms` after its first, also when the session was idle (its holder waits,
holding the session). Joining and starting are both decided in scripts, so a join never
races a start; both answer a re-send as the first call.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, cast

import pytest
from redis.asyncio import Redis

from app.metrics import Metrics
from app.redis.server import RedisServer
from app.sessions import admission, index, writes
from app.sessions.ref import SessionRef
from tests.support.api import AppClient, Target, app_client, post, run_of, wait_status
from tests.support.faultproxy import FaultProxy, evalsha_of
from tests.support.servers import Servers, client, fleet_client
from tests.support.targets import RedisTarget
from tests.support.waiting import wait_until

VARIANTS = pytest.mark.parametrize("broken", [False, True], ids=["script", "broken-variant"])


def micros(iso: str) -> int:
    return round(datetime.fromisoformat(iso).timestamp() * 1_000_000)


async def collected_at(redis: Redis, session: SessionRef, run_id: str) -> list[int]:
    """When each message joined `run_id` (ms on Redis' clock, from its event ids)."""
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], await redis.xrange(session.keys.events))
    return [
        int(entry_id.decode().split("-")[0])
        for entry_id, fields in entries
        if fields[b"type"] in (b"queued", b"collected") and fields[b"run_id"] == run_id.encode()
    ]


async def collect(to: Target, session: str, text: str, collect_ms: int) -> dict[str, Any]:
    response = await post(to, session, text, busy_policy="collect", collect_ms=collect_ms)
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_a_burst_across_workers_becomes_one_run_with_every_input(
    fleet: Servers, fleet_redis: Redis
) -> None:
    """Across a 4-worker server and a second process, on one Redis server and the cluster."""
    servers, redis = fleet, fleet_redis
    collect_ms = 600
    targets = [servers.four_workers, servers.other_process] * 3
    texts = [f"part {i}" for i in range(6)]
    answers = await asyncio.gather(
        *(collect(to, "burst", text, collect_ms) for to, text in zip(targets, texts, strict=True))
    )
    run_ids = {answer["run_id"] for answer in answers}
    assert len(run_ids) == 1, answers
    assert {answer["disposition"] for answer in answers} == {"collected"}
    [run_id] = run_ids
    run = await wait_status(servers.four_workers, run_id, "completed")
    assert sorted(run["inputs"]) == sorted(texts) and len(run["inputs"]) == 6
    assert run["output"] == "echo: " + "\n\n".join(run["inputs"])
    assert (run["disposition"], run["busy_policy"]) == ("collected", "collect")
    joined = await collected_at(redis, SessionRef.of("acme", "burst"), run_id)
    assert len(joined) == 6
    assert micros(run["started_at"]) >= (max(joined) + collect_ms) * 1000
    async with client(servers.other_process) as http:
        turns = (await http.get("/v1/sessions/burst/transcript")).json()["turns"]
    assert [t["text"] for t in turns] == [*run["inputs"], run["output"]]


async def test_a_burst_that_goes_on_starts_at_ten_times_collect_ms(
    fleet: Servers, fleet_redis: Redis
) -> None:
    """Messages to a 4-worker server and a second process in turn, on both topologies."""
    redis, collect_ms = fleet_redis, 400
    async with fleet_client(fleet) as api:
        first = await collect(api, "cap", "m0", collect_ms)
        began = time.monotonic()
        answers = [first]
        # One message every 0.6 x collect_ms: the window never closes by itself, so only
        # the cap (10 x collect_ms after the first) starts the run.
        while answers[-1]["run_id"] == first["run_id"]:
            assert time.monotonic() - began < 10 * collect_ms / 1000 + 3, "never started"
            await asyncio.sleep(0.6 * collect_ms / 1000)  # the burst's pace, not a wait
            answers.append(await collect(api, "cap", f"m{len(answers)}", collect_ms))
        run = await wait_status(api, first["run_id"], "completed")
        session = SessionRef.of("acme", "cap")
        joined = await collected_at(redis, session, first["run_id"])
        follower = answers[-1]
        arrivals = joined + (await collected_at(redis, session, follower["run_id"]))[:1]
        # The run may start at the cap, or earlier only if the burst paused for collect_ms
        # (a stalled machine can make it pause): either way, no earlier than allowed.
        closed = [a + collect_ms for a, b in itertools.pairwise(arrivals) if b - a >= collect_ms]
        expected = min([joined[0] + 10 * collect_ms, *closed])
        print(f"collect run started by the {'window' if closed else 'cap'}")
        started = micros(run["started_at"]) // 1000
        assert expected <= started <= expected + 1000  # generous: a loaded machine is late
        assert run["inputs"] == [f"m{i}" for i in range(len(answers) - 1)]
        assert len(run["inputs"]) < 20
        assert follower["run_id"] != first["run_id"] and follower["disposition"] == "collected"
        assert (await wait_status(api, follower["run_id"], "completed"))["inputs"] == [
            f"m{len(answers) - 1}"
        ]


async def test_a_waiting_collect_run_stops_at_once_and_the_default_comes_from_patch(
    redis: Redis, redis_server: RedisServer
) -> None:
    async with app_client(redis_server.url) as api:
        await post(api, "w", "hello", wait=5, expect=200)
        patched = await api.patch("/v1/sessions/w", json={"busy_policy": "collect"})
        assert patched.status_code == 200
        patched = await api.patch("/v1/sessions/w", json={"collect_ms": 30_000})
        view = patched.json()
        assert (view["default_busy_policy"], view["default_collect_ms"]) == ("collect", 30_000)
        assert (await api.patch("/v1/sessions/w", json={})).status_code == 422
        waiting = (await post(api, "w", "one", expect=202)).json()
        assert waiting["disposition"] == "collected"
        view = (await api.get("/v1/sessions/w")).json()
        assert view["state"] == "busy" and view["holder"] is not None
        assert view["queued"] == [waiting["run_id"]] and view["active_run"] is None
        began = time.monotonic()
        stopped = (await api.post("/v1/sessions/w/stop")).json()
        assert stopped["cancelled"] == [waiting["run_id"]]

        async def released() -> bool:
            return (await api.get("/v1/sessions/w")).json()["holder"] is None

        await wait_until(released, 5, "the holder to stop waiting and release the session")
        assert time.monotonic() - began < 5  # not the 30 s of its window
        after = (await post(api, "w", "two", busy_policy="enqueue", wait=5, expect=200)).json()
        assert after["status"] == "completed"
        # A message put before a collect run that is waiting runs now, not after its window.
        waiting = (await post(api, "w", "three", expect=202)).json()
        urgent = (await post(api, "w", "now", busy_policy="interrupt", wait=5)).json()
        assert urgent["status"] == "completed", urgent
        assert (await run_of(api, waiting["run_id"]))["status"] == "queued"
        await api.post("/v1/sessions/w/stop")


@pytest.fixture
async def own_redis(own_redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(own_redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
async def proxy(own_redis_server: RedisServer, own_redis: Redis) -> AsyncIterator[FaultProxy]:
    async with FaultProxy("127.0.0.1", own_redis_server.port) as running:
        yield running


@asynccontextmanager
async def _service(proxy: FaultProxy) -> AsyncIterator[AppClient]:
    async with app_client(
        proxy.url, metrics=Metrics(), lease_ttl_seconds=2.0, sweep_interval_seconds=3600
    ) as api:
        await api.resources.load_scripts()
        yield api


def sha(api: AppClient, name: str) -> str:
    for script in api.resources.scripts:
        if getattr(script, "name", None) == name:
            return str(script.sha)
    raise AssertionError(f"no script {name}")


async def holds(check: Any, broken: bool) -> None:
    if not broken:
        await check()
        return
    with pytest.raises(AssertionError):
        await check()


@VARIANTS
async def test_a_join_resent_joins_once(
    proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch, broken: bool
) -> None:
    if broken:  # no memory of the message it merged: the re-send joins it again
        text = admission.ADMIT
        old = "  if merged then return merged_answer(merged) end\n  if ARGV[7]"
        assert old in text
        monkeypatch.setattr(admission, "ADMIT", text.replace(old, "  if ARGV[7]"))
    async with _service(proxy) as api:
        first = await collect(api, "j", "one", 300)
        fault = proxy.drop_reply(evalsha_of(sha(api, "admit")))
        second = await collect(api, "j", "two", 300)
        assert fault.fired.is_set()

        async def check() -> None:
            assert (second["run_id"], second["disposition"]) == (first["run_id"], "collected")
            run = await wait_status(api, first["run_id"], "completed")
            assert run["inputs"] == ["one", "two"]

        await holds(check, broken)


@VARIANTS
async def test_the_start_after_collecting_resent_starts_once(
    proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch, broken: bool
) -> None:
    if broken:  # no memory of its own call: the re-send finds the queue empty and releases
        text = writes.TAKE
        assert "  if state[3] == call then" in text
        monkeypatch.setattr(
            writes, "TAKE", text.replace("  if state[3] == call then", "  if false then")
        )
    async with _service(proxy) as api:
        fault = proxy.drop_reply(evalsha_of(sha(api, "take")))
        first = await collect(api, "t", "one", 100)

        async def check() -> None:
            await wait_until(lambda: _fired(fault), 5, "the start re-sent")
            await wait_until(lambda: _ended(api, first["run_id"]), 3, "the collect run to end")
            run = await run_of(api, first["run_id"])
            assert run["status"] == "completed" and run["inputs"] == ["one"]
            after = (await post(api, "t", "next", wait=5, expect=200)).json()
            assert after["status"] == "completed"

        await holds(check, broken)


@VARIANTS
async def test_an_outcome_resent_while_a_collect_run_waits_keeps_the_holder_waiting(
    proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch, broken: bool
) -> None:
    if broken:  # the re-send forgets the collect run it left waiting: it says "released"
        text = writes.FINISH
        old = "    if mine and state[7] and state[7] ~= '' then"
        assert old in text
        monkeypatch.setattr(writes, "FINISH", text.replace(old, "    if false then"))
    async with _service(proxy) as api:
        first = (await post(api, "f", "slow", metadata={"delay_ms": 300}, expect=202)).json()
        waiting = await collect(api, "f", "later", 5000)
        fault = proxy.drop_reply(evalsha_of(sha(api, "finish")))
        await wait_status(api, first["run_id"], "completed")
        await wait_until(lambda: _fired(fault), 5, "the outcome re-sent")
        await api.patch("/v1/sessions/f", json={"busy_policy": "interrupt"})

        async def check() -> None:
            # The holder still holds the session and waits: a message put first runs now.
            urgent = (await post(api, "f", "now", wait=3)).json()
            assert urgent["status"] == "completed", urgent
            assert (await run_of(api, waiting["run_id"]))["status"] == "queued"

        await holds(check, broken)
        await api.post("/v1/sessions/f/stop")


@VARIANTS
async def test_a_take_over_resent_while_a_collect_run_waits_takes_it_once(
    proxy: FaultProxy, own_redis: Redis, monkeypatch: pytest.MonkeyPatch, broken: bool
) -> None:
    if broken:  # the re-send knows only a running run, not one its holder waits for
        text = index.RECOVER
        old = "local first = (state[1] or '') ~= '' and state[1] or state[2] or ''"
        assert old in text
        monkeypatch.setattr(index, "RECOVER", text.replace(old, "local first = state[1] or ''"))
    session = SessionRef.of("default", "o")
    async with _service(proxy) as api:
        waiting = await collect(api, "o", "orphan", 1500)
        active = api.resources.sessions._deps.active

        async def holder_waits() -> bool:
            return waiting["run_id"] in active

        async def holder_gone() -> bool:
            return not await holder_waits()

        await wait_until(holder_waits, 5, "the holder to wait for the collect run")
        await own_redis.delete(session.keys.lease.lease)  # as if its holder had died
        await wait_until(holder_gone, 5, "the old holder to notice")
        fault = proxy.drop_reply(evalsha_of(sha(api, "recover")))
        outcome = await api.resources.sessions.take_over(session)
        assert fault.fired.is_set()

        async def check() -> None:
            assert outcome == "taken"
            await wait_until(lambda: _ended(api, waiting["run_id"]), 4, "the collect run")
            assert (await run_of(api, waiting["run_id"]))["status"] == "completed"

        await holds(check, broken)


async def _ended(api: AppClient, run_id: str) -> bool:
    return (await run_of(api, run_id))["status"] not in ("queued", "running")


async def _fired(fault: Any) -> bool:
    return bool(fault.fired.is_set())


async def test_a_burst_becomes_one_run_on_each_topology(
    target_redis: Redis, redis_target: RedisTarget
) -> None:
    async with app_client(redis_target.url) as api:
        answers = await asyncio.gather(*(collect(api, "topo", t, 200) for t in "abc"))
        assert len({a["run_id"] for a in answers}) == 1
        run = await run_of(api, answers[0]["run_id"])
        assert run["status"] == "queued" and run["collect_ms"] == 200
        ended = await wait_status(api, answers[0]["run_id"], "completed")
        assert sorted(ended["inputs"]) == ["a", "b", "c"]
        assert ended["output"] == "echo: " + "\n\n".join(ended["inputs"])
