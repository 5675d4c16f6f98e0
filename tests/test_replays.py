"""Every session script answers a re-sent call as it answered the first.

redis-py re-sends a command whose reply was lost. A fault-injecting proxy between the
service and a real redis-server withholds the reply to one script call and drops the
connection, so the client re-sends it; the outcome must equal the outcome without the
fault. Each test also runs against a deliberately broken variant of its script (the
shape a careless script would have) and must catch it: `broken` parametrizes each test,
and the broken run asserts that the check fails.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import pytest
from redis.asyncio import Redis

from app.capacity import marks
from app.metrics import Metrics
from app.redis.server import RedisServer
from app.sessions import admission, control, emits, index, lua, renewal, writes
from app.sessions.ref import SessionRef
from tests.support.api import AppClient, app_client, post, run_of, wait_status
from tests.support.faultproxy import FaultProxy, evalsha_of
from tests.support.waiting import wait_until

SLOW = {"delay_ms": 600}


@pytest.fixture
async def redis(own_redis_server: RedisServer) -> AsyncIterator[Redis]:
    """A client of the test's own redis-server. Not the suite's: the long-lived servers
    other tests start sweep the suite's Redis, and would take over the sessions these
    tests leave holderless on purpose."""
    client = Redis.from_url(own_redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
async def proxy(own_redis_server: RedisServer, redis: Redis) -> AsyncIterator[FaultProxy]:
    async with FaultProxy("127.0.0.1", own_redis_server.port) as running:
        yield running


@asynccontextmanager
async def service(proxy: FaultProxy, **settings: Any) -> AsyncIterator[AppClient]:
    async with app_client(
        proxy.url, metrics=Metrics(), **({"lease_ttl_seconds": 2.0} | settings)
    ) as api:
        await api.resources.load_scripts()  # as readiness does: a fault then hits the script
        yield api


def sha(api: AppClient, name: str) -> str:
    for script in api.resources.scripts:
        if getattr(script, "name", None) == name:
            return str(script.sha)
    raise AssertionError(f"no script {name}")


def stale_writes(api: AppClient) -> float:
    value = api.resources.metrics.registry.get_sample_value(
        "leasegate_stale_fence_writes_refused_total"
    )
    return value or 0.0


async def events_of(redis: Redis, session: SessionRef) -> list[dict[str, str]]:
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], await redis.xrange(session.keys.events))
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in entries]


async def terminal_events(redis: Redis, session: SessionRef, run_id: str) -> list[str]:
    return [
        event["type"]
        for event in await events_of(redis, session)
        if event["run_id"] == run_id and event["type"] not in ("queued", "started", "delta")
    ]


def breaks(monkeypatch: pytest.MonkeyPatch, module: Any, name: str, old: str, new: str) -> None:
    """Replace `old` by `new` in the script constant `module.name` (it must be there)."""
    text: str = getattr(module, name)
    assert old in text, f"{name} no longer contains the part the broken variant changes"
    monkeypatch.setattr(module, name, text.replace(old, new))


Check = Callable[[], Any]


async def holds(check: Check, broken: bool) -> None:
    """Run `check`; with the broken variant it must fail (the test catches the bug)."""
    if not broken:
        await check()
        return
    with pytest.raises(AssertionError):
        await check()


VARIANTS = pytest.mark.parametrize("broken", [False, True], ids=["script", "broken-variant"])
SESSION = SessionRef.of("default", "s")


@VARIANTS
async def test_admit_resent_with_an_idempotency_key_keeps_its_hold(
    proxy: FaultProxy, redis: Redis, monkeypatch: pytest.MonkeyPatch, broken: bool
) -> None:
    if broken:  # the idempotency key looked at before "this very call already ran"
        breaks(monkeypatch, admission, "ADMIT", "  if mine then", "  if false then")
    async with service(proxy) as api:
        fault = proxy.drop_reply(evalsha_of(sha(api, "admit")))
        response = await post(api, "s", "hello", wait=2, idempotency_key="k-1")
        assert fault.fired.is_set()

        async def check() -> None:
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["status"] == "completed" and "idempotent_replay" not in body
            assert await terminal_events(redis, SESSION, body["run_id"]) == ["completed"]
            assert stale_writes(api) == 0
            assert (await post(api, "s", "next", wait=5)).json()["status"] == "completed"

        await holds(check, broken)


@VARIANTS
async def test_finish_resent_after_it_released_the_session(
    proxy: FaultProxy, redis: Redis, monkeypatch: pytest.MonkeyPatch, broken: bool
) -> None:
    if broken:  # no memory of its own outcome: the re-send finds the lease gone
        breaks(
            monkeypatch, writes, "FINISH", "if run and run.closed_by == fence then", "if false then"
        )
    async with service(proxy) as api:
        fault = proxy.drop_reply(evalsha_of(sha(api, "finish")))
        first = (await post(api, "s", "one", wait=5)).json()
        assert fault.fired.is_set()

        async def check() -> None:
            assert first["status"] == "completed"
            assert await terminal_events(redis, SESSION, first["run_id"]) == ["completed"]
            assert stale_writes(api) == 0
            second = (await post(api, "s", "two", wait=5)).json()
            assert second["status"] == "completed" and second["fence"] == first["fence"] + 1

        await holds(check, broken)


@VARIANTS
async def test_finish_resent_after_it_started_the_next_run(
    proxy: FaultProxy, redis: Redis, monkeypatch: pytest.MonkeyPatch, broken: bool
) -> None:
    if broken:
        breaks(
            monkeypatch, writes, "FINISH", "if run and run.closed_by == fence then", "if false then"
        )
    async with service(proxy) as api:
        first = (await post(api, "s", "one", metadata=SLOW)).json()
        second = (await post(api, "s", "two")).json()
        proxy.drop_reply(evalsha_of(sha(api, "finish")))

        async def check() -> None:
            await wait_status(api, first["run_id"], "completed")
            ended = await wait_status(api, second["run_id"], "completed", "lost", "failed")
            assert ended["status"] == "completed"
            assert await terminal_events(redis, SESSION, second["run_id"]) == ["completed"]
            assert stale_writes(api) == 0

        await holds(check, broken)


@VARIANTS
async def test_delta_resent_is_not_sent_twice(
    proxy: FaultProxy, redis: Redis, monkeypatch: pytest.MonkeyPatch, broken: bool
) -> None:
    if broken:  # no batch check: a re-sent write is appended again
        breaks(
            monkeypatch,
            emits,
            "EMIT",
            "if tonumber(state[4] or '0') >= batch then return {OK} end",
            "",
        )
    async with service(proxy) as api:
        fault = proxy.drop_reply(evalsha_of(sha(api, "emit")))
        run = (await post(api, "s", "a longer message", wait=5, metadata={"delay_ms": 450})).json()
        assert fault.fired.is_set()

        async def check() -> None:
            events = await events_of(redis, SESSION)
            sent = [event["text"] for event in events if event["type"] == "delta"]
            assert "".join(sent) == run["output"] == "echo: a longer message"

        await holds(check, broken)


@VARIANTS
async def test_renew_resent_still_honours_a_stop_request(
    proxy: FaultProxy, redis: Redis, monkeypatch: pytest.MonkeyPatch, broken: bool
) -> None:
    if broken:  # the renewal consumes the stop request it reads
        breaks(
            monkeypatch,
            renewal,
            "RENEW",
            "append(out, {OK, found[2] or '', found[3] or ''})",
            "redis.call('HDEL', state, 'stop_run', 'stop') "
            "append(out, {OK, found[2] or '', found[3] or ''})",
        )
    async with service(proxy, lease_ttl_seconds=1.5) as api:
        run = (await post(api, "s", "long", metadata={"delay_ms": 60_000})).json()
        await wait_until(lambda: _confirmed(redis, run["run_id"]), 5, "the run's start confirmed")
        # A stop whose pub/sub message was lost: only the renewal can tell the holder.
        await redis.hset(
            SESSION.keys.state, mapping={"stop_run": run["run_id"], "stop": "cancelled"}
        )
        fault = proxy.drop_reply(evalsha_of(sha(api, "renew")))

        async def check() -> None:
            await wait_until(lambda: _fired(fault), 5, "a renewal re-sent")
            ended = await wait_status(api, run["run_id"], "cancelled")
            assert ended["status"] == "cancelled"

        await holds(check, broken)
        await api.post("/v1/sessions/s/stop")


async def _confirmed(redis: Redis, run_id: str) -> bool:
    return await redis.hget(SESSION.keys.state, "confirmed") == run_id.encode()


async def _fired(fault: Any) -> bool:
    return bool(fault.fired.is_set())


@VARIANTS
async def test_recover_resent_takes_the_session_once(
    proxy: FaultProxy, redis: Redis, monkeypatch: pytest.MonkeyPatch, broken: bool
) -> None:
    if broken:  # no memory of its own take-over: the re-send finds a holder and says busy
        breaks(monkeypatch, index, "RECOVER", "if holder == ARGV[1] then", "if false then")
    async with service(proxy, sweep_interval_seconds=3600) as api:
        first = (await post(api, "s", "long", metadata={"delay_ms": 60_000})).json()
        queued = (await post(api, "s", "next")).json()
        await wait_until(lambda: _confirmed(redis, first["run_id"]), 5, "the run's start confirmed")
        await redis.delete(SESSION.keys.lease.lease)  # as if the holder had died
        await wait_until(lambda: _lost_a_lease(api), 5, "the old holder to notice")
        fault = proxy.drop_reply(evalsha_of(sha(api, "recover")))
        outcome = await api.resources.sessions.take_over(SESSION)
        assert fault.fired.is_set()

        async def check() -> None:
            assert outcome == "taken"
            assert (await wait_status(api, queued["run_id"], "completed"))["status"] == "completed"
            assert (await run_of(api, first["run_id"]))["status"] == "lost"

        await holds(check, broken)


async def _lost_a_lease(api: AppClient) -> bool:
    registry = api.resources.metrics.registry
    return bool(registry.get_sample_value("leasegate_lease_losses_total", {"reason": "taken"}))


@VARIANTS
async def test_cancel_resent_answers_cancelled(
    proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch, broken: bool
) -> None:
    if broken:  # no stored answer: the re-send finds the run already cancelled
        breaks(monkeypatch, control, "CANCEL", "if prior then return cjson.decode(prior) end", "")
    async with service(proxy) as api:
        await post(api, "s", "long", metadata={"delay_ms": 60_000})
        queued = (await post(api, "s", "next")).json()
        proxy.drop_reply(evalsha_of(sha(api, "cancel")))
        response = await api.post(f"/v1/runs/{queued['run_id']}/cancel")

        async def check() -> None:
            assert response.status_code == 200, response.text
            assert response.json()["status"] == "cancelled"

        await holds(check, broken)
        await api.post("/v1/sessions/s/stop")


@VARIANTS
async def test_stop_resent_lists_every_run_it_stopped(
    proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch, broken: bool
) -> None:
    if broken:
        breaks(monkeypatch, control, "STOP", "if prior then return cjson.decode(prior) end", "")
    async with service(proxy) as api:
        active = (await post(api, "s", "long", metadata={"delay_ms": 60_000})).json()
        queued = (await post(api, "s", "next")).json()
        proxy.drop_reply(evalsha_of(sha(api, "stop")))
        response = await api.post("/v1/sessions/s/stop")

        async def check() -> None:
            assert response.json()["cancelled"] == [queued["run_id"], active["run_id"]]

        await holds(check, broken)


@VARIANTS
async def test_reset_resent_bumps_the_generation_once(
    proxy: FaultProxy, redis: Redis, monkeypatch: pytest.MonkeyPatch, broken: bool
) -> None:
    if broken:
        breaks(monkeypatch, control, "RESET", "if prior then return cjson.decode(prior) end", "")
    async with service(proxy) as api:
        active = (await post(api, "s", "long", metadata={"delay_ms": 60_000})).json()
        proxy.drop_reply(evalsha_of(sha(api, "reset")))
        response = await api.post("/v1/sessions/s/reset")

        async def check() -> None:
            assert response.json()["generation"] == 2
            assert response.json()["cancelled"] == [active["run_id"]]
            assert await terminal_events(redis, SESSION, active["run_id"]) == ["cancelled"]
            after = (await post(api, "s", "fresh", wait=5)).json()
            assert after["status"] == "completed" and after["generation"] == 2

        await holds(check, broken)


@VARIANTS
async def test_an_admission_redis_answers_late_is_run_not_lost(
    proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch, broken: bool
) -> None:
    """Redis hangs (not down) while a message is admitted: the request answers 503 within
    the Redis timeout, saying the outcome is unknown; the admission did run, and its run
    is run; a retry with the same key finds it."""
    if broken:  # a granted run nobody started ends `lost`, and nothing re-sends the call
        breaks(
            monkeypatch, lua, "HELPERS", "if (not confirmed and attempt < MAX_ATTEMPTS) or", "if"
        )
        monkeypatch.setattr("app.sessions.service.Sessions._reconcile", _nothing)
    async with service(
        proxy, redis_timeout_seconds=0.5, lease_ttl_seconds=1.0, sweep_interval_seconds=0.5
    ) as api:
        # Redis runs the admission; its answer, and all that follows on that connection,
        # waits (so the admission certainly ran: the hang starts at its reply).
        late = proxy.hang_after(evalsha_of(sha(api, "admit")))
        began = time.monotonic()
        response = await post(api, "s", "hello", wait=5, idempotency_key="k-late")
        assert late.fired.is_set()
        # Within the Redis timeout (0.5 s), not after the client's re-sends of it: they would
        # take 1.5 s at the least. A generous bound, since this is behaviour, not speed.
        assert time.monotonic() - began < 1.4
        assert response.status_code == 503, response.text
        assert "retrying with the same Idempotency-Key is safe" in response.json()["detail"]
        assert response.headers["Retry-After"]
        proxy.release()

        async def check() -> None:
            async def settled() -> bool:
                again = await post(api, "s", "hello", wait=5, idempotency_key="k-late")
                return again.status_code == 200 and again.json()["status"] != "running"

            await wait_until(settled, 10, "the retry to find the run ended")
            again = (await post(api, "s", "hello", wait=5, idempotency_key="k-late")).json()
            assert again["status"] == "completed" and again["idempotent_replay"] is True

        await holds(check, broken)


async def _nothing(*_: Any) -> None:
    return None


@VARIANTS
async def test_a_session_held_past_the_retention_keeps_its_fence(
    proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch, broken: bool
) -> None:
    """The fence and the run records are kept while a holder renews, however long."""
    if broken:  # the renewal keeps only the lease
        breaks(
            monkeypatch,
            renewal,
            "RENEW",
            "for k = i * 4 - 2, i * 4 do redis.call('PEXPIRE', KEYS[k], RETENTION_MS) end",
            "",
        )
    async with service(proxy, lease_ttl_seconds=0.6, run_retention_seconds=1) as api:
        run = (await post(api, "task", "long", metadata={"delay_ms": 2500})).json()

        async def check() -> None:
            await wait_until(lambda: _ended(api, run["run_id"]), 10, "the run to end")
            assert stale_writes(api) == 0
            assert (await run_of(api, run["run_id"]))["status"] == "completed"

        await holds(check, broken)


async def _ended(api: AppClient, run_id: str) -> bool:
    response = await api.get(f"/v1/runs/{run_id}")
    return response.status_code == 404 or response.json()["status"] not in ("queued", "running")


CAPPED = """
[[agents]]
id = "capped"
backend = "echo"
max_concurrent_runs = 1
"""


@VARIANTS
async def test_a_resent_end_of_a_capacity_wait_keeps_the_runs_start_time(
    proxy: FaultProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broken: bool
) -> None:
    if broken:  # the start time moved by every clearing, not only the one that cleared
        old = "changed = redis.call('HDEL', KEYS[1], ARGV[1] .. ':w')"
        breaks(monkeypatch, marks, "MARK", old, f"{old}; changed = 1")
    agents = tmp_path / "agents.toml"
    agents.write_text(CAPPED)
    async with service(proxy, agents_file=agents) as api:
        mark = hashlib.sha1(marks.MARK.encode(), usedforsecurity=False).hexdigest()
        is_mark = evalsha_of(mark)
        # the clearing that ends the second run's wait: `EVALSHA sha 1 runs id '' '1'`
        fault = proxy.drop_reply(lambda args: is_mark(args) and args[5:] == [b"", b"1"])
        fired_at: list[float] = []
        fire = fault.fire

        def noted() -> None:  # when the first call's reply came: after it ran, before the re-send
            fired_at.append(time.time())
            fire()

        monkeypatch.setattr(fault, "fire", noted)
        first = (await post(api, "s1", "one", agent_id="capped", metadata=SLOW)).json()
        second = (await post(api, "s2", "two", agent_id="capped")).json()
        ended = await wait_status(api, second["run_id"], "completed")
        assert fault.count == 1  # the clearing ran, its reply was lost, it was re-sent

        async def check() -> None:
            started = datetime.fromisoformat(ended["started_at"]).timestamp()
            # set by the first call (before its reply was lost), not moved by the re-send
            assert started <= fired_at[0]
            done = await run_of(api, first["run_id"])
            assert started >= datetime.fromisoformat(done["started_at"]).timestamp() + 0.6

        await holds(check, broken)
