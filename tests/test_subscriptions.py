"""Subscription auto-switch against a real redis-server: one switch per burst."""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import os
import re
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from redis.asyncio import Redis

from app.agents import AgentRegistry
from app.agents.config import load_agents_file
from app.agents.openai import OpenAIAgent
from app.keys import agent_keys
from app.locks import LeaseManager, LeaseScripts
from app.metrics import Metrics
from app.redis import create_redis
from app.redis.pubsub import PubSubHub
from tests.support.api import app_client, events, post
from tests.support.scenarios import EXHAUSTED_A
from tests.support.servers import INTERNAL, INTERNAL_SECRET, agents_settings
from tests.support.settings import make_settings
from tests.support.targets import RedisTarget
from tests.support.upstream import FakeUpstream, running_upstream
from tests.support.waiting import wait_until


@pytest.fixture
async def api(
    target_redis: Redis, redis_target: RedisTarget, tmp_path: Path
) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(redis_target.url, headers=INTERNAL, **agents_settings(tmp_path)) as http:
        yield http


async def fail(
    http: httpx.AsyncClient, agent: str, subscription: str, kind: str = "rate_limit"
) -> dict[str, Any]:
    response = await http.post(
        f"/internal/agents/{agent}/subscription-failures",
        json={"subscription_id": subscription, "kind": kind},
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_twenty_concurrent_failures_switch_once_and_every_run_completes_on_b(
    api: httpx.AsyncClient,
) -> None:
    responses = await asyncio.gather(
        *(
            post(api, f"s{i}", "hi", agent_id="helper", metadata=EXHAUSTED_A, wait=10, expect=200)
            for i in range(20)
        )
    )
    runs = [r.json() for r in responses]
    assert [(r["status"], r["subscription"]) for r in runs] == [("completed", "sub-b")] * 20
    state = (await api.get("/internal/agents/helper")).json()
    assert state["subscription"] == "sub-b" and state["switch_count"] == 1
    found = await events(api, "helper")
    assert [(e["type"], e["from"], e["to"]) for e in found] == [
        ("subscription_switched", "sub-a", "sub-b")
    ]


async def test_concurrent_failures_on_a_never_cascade_and_a_later_failure_on_b_moves_to_c(
    api: httpx.AsyncClient,
) -> None:
    results = await asyncio.gather(*(fail(api, "triple", "sub-a") for _ in range(12)))
    assert sum(r["switched"] for r in results) == 1
    assert {r["reason"] for r in results} == {"switched", "stale"}
    assert all(r["to"] == "sub-b" for r in results)
    assert (await api.get("/internal/agents/triple")).json()["subscription"] == "sub-b"
    later = await fail(api, "triple", "sub-b", "auth")
    assert later == {"switched": True, "from": "sub-b", "to": "sub-c", "reason": "switched"}
    state = (await api.get("/internal/agents/triple")).json()
    assert state["switch_count"] == 2
    standing = {s["id"]: (s["state"], s["kind"], s["refusals"]) for s in state["subscriptions"]}
    assert standing == {
        "sub-a": ("cooling", "rate_limit", {"rate_limit": 12}),
        "sub-b": ("disabled", "auth", {"auth": 1}),
        "sub-c": ("active", None, {}),
    }
    assert [s["id"] for s in state["subscriptions"] if s["assigned"]] == ["sub-c"]


async def test_no_viable_subscription_is_recorded_once_per_burst(api: httpx.AsyncClient) -> None:
    await fail(api, "helper", "sub-a")
    results = await asyncio.gather(*(fail(api, "helper", "sub-b") for _ in range(5)))
    assert {r["reason"] for r in results} <= {"no_alternative", "stale"}
    kinds = [e["type"] for e in await events(api, "helper")]
    assert kinds.count("no_viable_subscription") == 1
    # A run refused on the last subscription fails with the reason, and nothing cascades.
    exhausted = {"exhausted_subscriptions": ["sub-a", "sub-b"]}
    refused = await post(api, "s", "hi", agent_id="helper", metadata=exhausted, wait=10, expect=200)
    run = refused.json()
    assert run["status"] == "failed" and "no viable subscription" in run["error"]
    assert run["error"].startswith("subscriptions_exhausted: ")
    assert re.search(r"the first comes back in (5\d|60) s", run["error"])  # default: 60 > 30


async def test_two_agents_switch_independently(
    api: httpx.AsyncClient, redis_target: RedisTarget
) -> None:
    client = create_redis(make_settings(redis_target.url))
    hub = PubSubHub(client)
    hub.start()
    leases = LeaseManager(
        client, LeaseScripts.register(client), hub, ttl=30, heartbeat_interval=10, metrics=Metrics()
    )
    try:
        blocker = await leases.acquire(agent_keys("helper").lease.resource)
        assert blocker is not None  # helper's switch is stuck behind this holder
        stuck = asyncio.create_task(fail(api, "helper", "sub-a"))
        started = time.monotonic()
        other = await fail(api, "other", "sub-a")
        # Behaviour, not speed: not queued behind helper's switch, which waits up to 15 s.
        assert other["switched"] and time.monotonic() - started < 2
        assert not stuck.done()
        await leases.release(blocker)
        assert (await stuck)["switched"]
    finally:
        await hub.close()
        await client.aclose()


def _hold_switch_lease_forever(url: str, resource: str, ready: Any) -> None:
    async def hold() -> None:
        client = create_redis(make_settings(url))
        hub = PubSubHub(client)
        hub.start()
        leases = LeaseManager(
            client,
            LeaseScripts.register(client),
            hub,
            ttl=1.0,
            heartbeat_interval=0.3,
            metrics=Metrics(),
        )
        async with leases.hold(resource):
            ready.set()
            await asyncio.Event().wait()

    asyncio.run(hold())


@pytest.mark.multiprocess
async def test_a_switch_holder_killed_mid_switch_leaves_nothing_half_written(
    target_redis: Redis, redis_target: RedisTarget, tmp_path: Path
) -> None:
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    resource = agent_keys("helper").lease.resource
    holder = context.Process(
        target=_hold_switch_lease_forever, args=(redis_target.url, resource, ready)
    )
    holder.start()
    try:
        assert ready.wait(30)
        before = await target_redis.hgetall(agent_keys("helper").assignment)
        assert holder.pid is not None
        os.kill(holder.pid, signal.SIGKILL)  # dies holding the lease, renewals stop
        holder.join(10)
        assert await target_redis.hgetall(agent_keys("helper").assignment) == before
        async with app_client(
            redis_target.url,
            headers=INTERNAL,
            switch_wait_timeout_seconds=5,
            **agents_settings(tmp_path),
        ) as api:
            started = time.monotonic()
            result = await fail(api, "helper", "sub-a")
            assert result["switched"] and result["to"] == "sub-b"
            assert time.monotonic() - started < 3  # waited for the expiry (1 s), no longer
            state = (await api.get("/internal/agents/helper")).json()
            assert state["subscription"] == "sub-b" and state["switch_count"] == 1
    finally:
        if holder.is_alive():
            holder.kill()


async def test_manual_assignment_racing_an_auto_switch_is_serialized(
    api: httpx.AsyncClient,
) -> None:
    for round_ in range(8):
        agent = "triple"
        await api.put(f"/internal/agents/{agent}/subscription", json={"subscription_id": "sub-a"})
        put, failure = await asyncio.gather(
            api.put(f"/internal/agents/{agent}/subscription", json={"subscription_id": "sub-c"}),
            fail(api, agent, "sub-a"),
        )
        assert put.status_code == 200
        state = (await api.get(f"/internal/agents/{agent}")).json()
        history = list(reversed(await events(api, agent)))
        assert state["subscription"] == "sub-c", (round_, state, failure)
        assert state["switch_count"] == len(history)
        for before, after in itertools.pairwise(history):
            assert after["from"] == before["to"], history  # a chain, never a mix
        assert state["last_switch"]["to"] == history[-1]["to"] == "sub-c"


async def test_each_switch_posts_the_webhook_once(
    target_redis: Redis, redis_target: RedisTarget, tmp_path: Path
) -> None:
    received: list[dict[str, Any]] = []
    receiver = FastAPI()

    @receiver.post("/hook")
    async def hook(request: Request) -> dict[str, str]:
        received.append(await request.json())
        return {"ok": "yes"}

    async with running_upstream(receiver) as base_url:
        hook_url = base_url.removesuffix("/v1") + "/hook"
        async with app_client(
            redis_target.url, headers=INTERNAL, webhook_url=hook_url, **agents_settings(tmp_path)
        ) as api:
            await asyncio.gather(
                *(
                    post(
                        api,
                        f"s{i}",
                        "hi",
                        agent_id="helper",
                        metadata=EXHAUSTED_A,
                        wait=10,
                        expect=200,
                    )
                    for i in range(10)
                )
            )
            await wait_until(lambda: _at_least(received, 1), what="the webhook")
            await fail(api, "helper", "sub-a")  # stale now: no second POST
    assert len(received) == 1
    assert received[0] | {} == {
        "type": "subscription_switched",
        "agent_id": "helper",
        "from": "sub-a",
        "to": "sub-b",
        "reason": "auto",
        "kind": "rate_limit",
    }


async def test_unknown_agents_and_subscriptions_are_422(api: httpx.AsyncClient) -> None:
    assert (await api.get("/internal/agents/nobody")).status_code == 422
    assert (await fail_raw(api, "helper", "sub-z")).status_code == 422
    put = await api.put("/internal/agents/helper/subscription", json={"subscription_id": "sub-c"})
    assert put.status_code == 422  # helper has no sub-c
    bad = await api.post("/v1/sessions/s/messages", json={"text": "x", "agent_id": "ghost"})
    assert bad.status_code == 422


async def fail_raw(http: httpx.AsyncClient, agent: str, subscription: str) -> httpx.Response:
    return await http.post(
        f"/internal/agents/{agent}/subscription-failures",
        json={"subscription_id": subscription, "kind": "auth"},
    )


async def _at_least(items: list[Any], count: int) -> bool:
    return len(items) >= count


OPENAI_AGENT = "[[agents]]\nid='a'\nbackend='openai'\nmodel='m'\nsubscriptions=['s']\n"
ECHO_AGENT = "[[agents]]\nid='a'\nbackend='echo'\n"
SUB_S = "[[subscriptions]]\nid='s'\n"


@pytest.mark.parametrize(
    ("toml", "env", "message"),
    [
        (ECHO_AGENT + "subscriptions=['nope']\n", {}, "unknown subscription 'nope'"),
        (SUB_S + SUB_S + ECHO_AGENT, {}, "duplicate subscription id 's'"),
        (ECHO_AGENT + ECHO_AGENT, {}, "duplicate agent id 'a'"),
        (SUB_S + "base_url='http://x/v1'\napi_key_env='KEY_S'\n" + OPENAI_AGENT, {}, "KEY_S"),
        (SUB_S + "api_key_env='KEY_S'\n" + OPENAI_AGENT, {"KEY_S": "k"}, "needs a base_url"),
        ("[[agents]]\nid='a'\nbackend='magic'\n", {}, "backend"),
        ("agents = [", {}, "not valid TOML"),
    ],
)
def test_agents_file_errors_are_clear(
    tmp_path: Path, toml: str, env: dict[str, str], message: str
) -> None:
    from app.errors import AgentsConfigError

    path = tmp_path / "agents.toml"
    path.write_text(toml)
    with pytest.raises(AgentsConfigError, match=message):
        load_agents_file(path, env)


def test_agents_file_reads_keys_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "agents.toml"
    path.write_text(SUB_S + "base_url='http://x/v1'\napi_key_env='KEY_S'\n" + OPENAI_AGENT)
    config = load_agents_file(path, {"KEY_S": "sk-123"})
    assert config.subscription("s").api_key == "sk-123"
    assert "sk-123" not in repr(config)
    registry = AgentRegistry(config=config)
    assert registry.subscriptions_of("a") == ("s",)


async def test_an_openai_agent_switches_and_retries_on_the_new_key(
    target_redis: Redis, redis_target: RedisTarget, tmp_path: Path
) -> None:
    upstream = FakeUpstream()
    upstream.status(429, {"error": {"message": "Rate limit reached"}}).stream(["all ", "good"])
    async with running_upstream(upstream) as base_url:
        path = tmp_path / "agents.toml"
        path.write_text(
            f"[[subscriptions]]\nid='sub-a'\nbase_url='{base_url}'\napi_key_env='KEY_A'\n"
            f"[[subscriptions]]\nid='sub-b'\nbase_url='{base_url}'\napi_key_env='KEY_B'\n"
            "[[agents]]\nid='llm'\nbackend='openai'\nmodel='m'\nsubscriptions=['sub-a','sub-b']\n"
        )
        config = load_agents_file(path, {"KEY_A": "key-of-a", "KEY_B": "key-of-b"})
        agents = AgentRegistry(
            {"llm": OpenAIAgent(config.agents["llm"], backoff_base=0.01)}, config=config
        )
        async with app_client(
            redis_target.url, agents=agents, internal_secret=INTERNAL_SECRET
        ) as api:
            run = (await post(api, "s", "hi", agent_id="llm", wait=10, expect=200)).json()
            api.headers.update(INTERNAL)
            state = (await api.get("/internal/agents/llm")).json()
    assert run["status"] == "completed" and run["output"] == "all good"
    assert run["subscription"] == "sub-b" and state["subscription"] == "sub-b"
    keys = [r.headers["authorization"] for r in upstream.requests]
    assert keys == ["Bearer key-of-a", "Bearer key-of-b"]
