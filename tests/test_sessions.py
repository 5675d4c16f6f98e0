"""Session runs over HTTP, in one process, against a real redis-server."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from app.agents import AgentRegistry, AgentRequest, EchoAgent
from app.metrics import Metrics
from app.redis.server import RedisServer
from tests.support.api import app_client, post, run_of, wait_status
from tests.support.scenarios import SLOW, reset_racing_a_failing_run
from tests.support.targets import RedisTarget
from tests.support.waiting import wait_until, written_keys


@pytest.fixture
async def api(target_redis: Redis, redis_target: RedisTarget) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(redis_target.url, lease_ttl_seconds=2.0, queue_cap=5) as client:
        yield client


async def test_post_with_wait_returns_the_finished_run_and_records_the_transcript(
    api: httpx.AsyncClient,
) -> None:
    response = await post(api, "chat-1", "hello", wait=5)
    assert response.status_code == 200
    run = response.json()
    assert run["status"] == "completed" and run["output"] == "echo: hello"
    assert run["fence"] >= 1 and run["worker"]
    transcript = (await api.get("/v1/sessions/chat-1/transcript")).json()
    assert [(t["role"], t["text"], t["run_id"]) for t in transcript["turns"]] == [
        ("user", "hello", run["run_id"]),
        ("assistant", "echo: hello", run["run_id"]),
    ]
    session = (await api.get("/v1/sessions/chat-1")).json()
    assert session == {
        "session_id": "chat-1",
        "state": "idle",
        "holder": None,
        "active_run": None,
        "queued": [],
        "queue": [],
        "generation": 1,
        "last_error": None,
        "default_busy_policy": "enqueue",
        "agent_state": {},
    }


async def test_follow_ups_queue_and_run_in_order(api: httpx.AsyncClient) -> None:
    first = (await post(api, "s", "one", metadata=SLOW)).json()
    assert first["status"] == "running" and first["queue_position"] == 0
    follow = [(await post(api, "s", f"next-{i}")).json() for i in range(3)]
    assert [f["status"] for f in follow] == ["queued"] * 3
    assert [f["queue_position"] for f in follow] == [1, 2, 3]
    view = (await api.get("/v1/sessions/s")).json()
    assert view["state"] == "busy" and view["active_run"]["run_id"] == first["run_id"]
    assert view["queued"] == [f["run_id"] for f in follow]
    last = await wait_status(api, follow[-1]["run_id"], "completed")
    runs = [await run_of(api, r["run_id"]) for r in [first, *follow]]
    assert all(r["status"] == "completed" for r in runs)
    starts = [r["started_at"] for r in runs]
    assert starts == sorted(starts)
    assert last["output"] == "echo: next-2"


async def test_reject_policy_refuses_a_busy_session(api: httpx.AsyncClient) -> None:
    active = (await post(api, "s", "busy", metadata=SLOW)).json()
    refused = await post(api, "s", "no", busy_policy="reject")
    assert refused.status_code == 409
    assert refused.headers["content-type"] == "application/problem+json"
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["active_run_id"] == active["run_id"]
    runs = (await api.get("/v1/sessions/s/runs")).json()["runs"]
    assert [r["run_id"] for r in runs] == [active["run_id"]]  # nothing was created


async def test_full_queue_is_429_and_queues_nothing(api: httpx.AsyncClient) -> None:
    await post(api, "s", "busy", metadata=SLOW)
    for i in range(5):
        assert (await post(api, "s", f"q{i}")).status_code == 202
    full = await post(api, "s", "one too many")
    assert full.status_code == 429
    assert "retry-after" in full.headers
    assert len((await api.get("/v1/sessions/s")).json()["queued"]) == 5


async def test_idempotency_key_returns_the_first_run(api: httpx.AsyncClient) -> None:
    headers = {"Idempotency-Key": "msg-42"}
    first = await api.post("/v1/sessions/s/messages", json={"text": "hi"}, headers=headers)
    again = await api.post("/v1/sessions/s/messages", json={"text": "hi"}, headers=headers)
    in_body = await post(api, "s", "hi", idempotency_key="msg-42")
    assert first.json()["run_id"] == again.json()["run_id"] == in_body.json()["run_id"]
    assert again.json()["idempotent_replay"] is True
    assert len((await api.get("/v1/sessions/s/runs")).json()["runs"]) == 1
    conflict = await api.post(
        "/v1/sessions/s/messages",
        json={"text": "hi", "idempotency_key": "a"},
        headers={"Idempotency-Key": "b"},
    )
    assert conflict.status_code == 409


async def test_concurrent_identical_idempotent_posts_make_one_run(api: httpx.AsyncClient) -> None:
    responses = await asyncio.gather(
        *(post(api, "s", "once", idempotency_key="k1") for _ in range(20))
    )
    assert len({r.json()["run_id"] for r in responses}) == 1
    assert len((await api.get("/v1/sessions/s/runs")).json()["runs"]) == 1


@pytest.mark.parametrize(
    ("path", "body", "params"),
    [
        ("/v1/sessions/has space/messages", {"text": "x"}, {}),
        ("/v1/sessions/" + "x" * 129 + "/messages", {"text": "x"}, {}),
        ("/v1/sessions/a{b}/messages", {"text": "x"}, {}),
        ("/v1/sessions/s/messages", {"text": ""}, {}),
        ("/v1/sessions/s/messages", {"text": "x" * 32_001}, {}),
        ("/v1/sessions/s/messages", {}, {}),
        ("/v1/sessions/s/messages", {"text": "x", "busy_policy": "sometimes"}, {}),
        ("/v1/sessions/s/messages", {"text": "x", "agent_id": "nobody"}, {}),
        ("/v1/sessions/s/messages", {"text": "x", "metadata": {"k": "v" * 9000}}, {}),
        ("/v1/sessions/s/messages", {"text": "x", "surprise": 1}, {}),
        ("/v1/sessions/s/messages", {"text": "x"}, {"wait": 0}),
        ("/v1/sessions/s/messages", {"text": "x"}, {"wait": 61}),
    ],
)
async def test_bad_ids_and_bodies_are_422_and_change_nothing(
    api: httpx.AsyncClient,
    target_redis: Redis,
    path: str,
    body: dict[str, Any],
    params: dict[str, Any],
) -> None:
    response = await api.post(path, json=body, params=params)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert await written_keys(target_redis) == []


async def test_malformed_or_unknown_run_ids_are_404(api: httpx.AsyncClient) -> None:
    for run_id in ["nope", "ZGVmYXVsdC9z.0123456789abcdef", "!!.0123456789abcdef"]:
        assert (await api.get(f"/v1/runs/{run_id}")).status_code == 404
        assert (await api.post(f"/v1/runs/{run_id}/cancel")).status_code == 404


async def test_cancel_a_queued_run_and_a_finished_one(api: httpx.AsyncClient) -> None:
    active = (await post(api, "s", "busy", metadata=SLOW)).json()
    queued = (await post(api, "s", "later")).json()
    cancelled = await api.post(f"/v1/runs/{queued['run_id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert (await api.get("/v1/sessions/s")).json()["queued"] == []
    await wait_status(api, active["run_id"], "completed")
    again = await api.post(f"/v1/runs/{queued['run_id']}/cancel")
    assert again.status_code == 409 and again.json()["status"] == 409
    assert again.json()["run_status"] == "cancelled"
    assert (await run_of(api, queued["run_id"]))["status"] == "cancelled"


async def test_cancel_a_running_run_stops_it_and_the_session_goes_on(
    api: httpx.AsyncClient,
) -> None:
    active = (await post(api, "s", "long", metadata={"delay_ms": 60_000})).json()
    queued = (await post(api, "s", "next")).json()
    cancelled = await api.post(f"/v1/runs/{active['run_id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert (await wait_status(api, queued["run_id"], "completed"))["output"] == "echo: next"


async def test_stop_during_start_up_cancels_the_run_before_it_works(api: httpx.AsyncClient) -> None:
    started = (await post(api, "s", "slow start", metadata={"delay_ms": 60_000})).json()
    stopped = (await api.post("/v1/sessions/s/stop")).json()
    assert stopped["cancelled"] == [started["run_id"]]
    run = await wait_status(api, started["run_id"], "cancelled")
    assert run["output"] is None
    assert (await post(api, "s", "after", wait=5)).json()["status"] == "completed"


async def test_stop_cancels_the_active_run_and_every_queued_one(api: httpx.AsyncClient) -> None:
    active = (await post(api, "s", "a", metadata={"delay_ms": 60_000})).json()
    queued = [(await post(api, "s", f"q{i}")).json()["run_id"] for i in range(3)]
    stopped = (await api.post("/v1/sessions/s/stop")).json()
    assert sorted(stopped["cancelled"]) == sorted([*queued, active["run_id"]])
    for run_id in [*queued, active["run_id"]]:
        await wait_status(api, run_id, "cancelled")
    assert (await api.get("/v1/sessions/s")).json()["queued"] == []


async def test_interrupt_policy_interrupts_the_running_run_and_keeps_its_output(
    api: httpx.AsyncClient,
) -> None:
    old = (await post(api, "s", "long answer", metadata={"delay_ms": 60_000})).json()
    waiting = (await post(api, "s", "queued before")).json()

    async def first_delta() -> bool:
        view = (await api.get("/v1/sessions/s")).json()
        return view["active_run"] is not None  # running; partial output is in memory

    await wait_until(first_delta, what="run started")
    urgent = (await post(api, "s", "urgent", busy_policy="interrupt")).json()
    assert urgent["status"] == "queued" and urgent["queue_position"] == 1
    interrupted = await wait_status(api, old["run_id"], "interrupted")
    assert interrupted["finished_at"] is not None
    done = await wait_status(api, urgent["run_id"], "completed")
    after = await wait_status(api, waiting["run_id"], "completed")
    assert done["started_at"] < after["started_at"]  # the interrupting run went first


async def test_interrupted_run_keeps_its_partial_output(
    target_redis: Redis, redis_target: RedisTarget
) -> None:
    first_delta = asyncio.Event()

    class HalfThenHang(EchoAgent):
        async def stream(self, request: AgentRequest) -> AsyncIterator[str]:
            yield "partial "
            if request.text == "hang":
                first_delta.set()
                await asyncio.Event().wait()
            yield "done"

    agents = AgentRegistry({"echo": HalfThenHang()})
    async with app_client(redis_target.url, agents=agents, lease_ttl_seconds=2.0) as api:
        old = (await post(api, "s", "hang")).json()
        await first_delta.wait()
        await asyncio.sleep(0)  # let the holder take the delta it was handed
        await post(api, "s", "urgent", busy_policy="interrupt")
        interrupted = await wait_status(api, old["run_id"], "interrupted")
        assert interrupted["output"] == "partial "
        turns = (await api.get("/v1/sessions/s/transcript")).json()["turns"]
        assert {"role": "assistant", "text": "partial ", "run_id": old["run_id"]} in turns


async def test_a_failing_agent_fails_the_run_and_frees_the_session(api: httpx.AsyncClient) -> None:
    failed = (await post(api, "s", "boom", metadata={"fail": "error"}, wait=5)).json()
    assert failed["status"] == "failed" and "fail" in failed["error"]
    assert (await api.get("/v1/sessions/s")).json()["state"] == "idle"
    assert (await post(api, "s", "next", wait=5)).json()["status"] == "completed"


async def test_reset_racing_a_failing_run_leaves_no_zombie(
    target_redis: Redis, redis_target: RedisTarget
) -> None:
    metrics = Metrics()
    async with app_client(redis_target.url, metrics=metrics, lease_ttl_seconds=2.0) as api:
        await reset_racing_a_failing_run(api, metrics)


async def test_follow_ups_are_drained_by_a_loop_with_constant_stack_depth(
    target_redis: Redis, redis_target: RedisTarget
) -> None:
    depths: list[int] = []
    gate = asyncio.Event()

    class DepthProbe(EchoAgent):
        async def stream(self, request: AgentRequest) -> AsyncIterator[str]:
            depths.append(len(inspect.stack(0)))
            if request.text == "first":
                await gate.wait()
            yield "ok"

    agents = AgentRegistry({"echo": DepthProbe()})
    async with app_client(redis_target.url, agents=agents, lease_ttl_seconds=2.0) as api:
        first = (await post(api, "s", "first")).json()
        follow = [(await post(api, "s", f"f{i}")).json()["run_id"] for i in range(15)]
        gate.set()
        await wait_status(api, follow[-1], "completed")
        runs = [await run_of(api, r) for r in [first["run_id"], *follow]]
    assert len(depths) == 16
    assert len(set(depths)) == 1, depths
    assert len({r["worker"] for r in runs}) == 1  # one holder drained them all
    fences = [r["fence"] for r in runs]  # each run under its own, higher fence
    assert fences == list(range(fences[0], fences[0] + 16)), fences


async def test_runs_are_listed_newest_first_with_pages(api: httpx.AsyncClient) -> None:
    ids = [(await post(api, "s", f"m{i}", wait=5)).json()["run_id"] for i in range(5)]
    page1 = (await api.get("/v1/sessions/s/runs", params={"limit": 3})).json()
    assert [r["run_id"] for r in page1["runs"]] == ids[::-1][:3]
    page2 = (await api.get("/v1/sessions/s/runs", params={"limit": 3, "offset": 3})).json()
    assert [r["run_id"] for r in page2["runs"]] == ids[::-1][3:]
    assert page1["next_offset"] == 3 and page2["next_offset"] is None


async def test_an_idle_session_holds_no_lease_and_every_key_expires(
    api: httpx.AsyncClient, target_redis: Redis
) -> None:
    await post(api, "s", "hello", wait=5)
    keys = [k.decode() async for k in target_redis.scan_iter("lg:{s:*")]
    assert not any(k.endswith(":lease") for k in keys)
    for key in keys:
        ttl = await target_redis.ttl(key)
        assert 0 < ttl <= 7 * 24 * 3600, (key, ttl)


async def test_redis_down_is_503_and_the_service_recovers(own_redis_server: RedisServer) -> None:
    async with app_client(own_redis_server.url, redis_timeout_seconds=0.5) as api:
        assert (await post(api, "s", "before", wait=5)).status_code == 200
        own_redis_server.stop()
        down = await post(api, "s", "during")
        assert down.status_code == 503
        assert down.headers["retry-after"] == str(api.settings.retry_after_seconds)
        own_redis_server.start()
        after = await post(api, "s", "after", wait=5)
        assert after.status_code == 200 and after.json()["status"] == "completed"
        runs = (await api.get("/v1/sessions/s/runs")).json()["runs"]
        assert [r["input"] for r in runs] == ["after", "before"]  # nothing half-written
