"""Classified refusals end to end: openai agents on a fake upstream on a real port, the app
in process on a real redis-server. A refusal cools (or disables) the refused subscription
for its kind's cooldown; runs rotate once per subscription; with none left, a short rate
limit is waited out and anything else fails with `subscriptions_exhausted`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from app.agents import AgentRegistry
from app.agents.config import load_agents_file
from app.agents.openai import OpenAIAgent
from app.metrics import Metrics
from tests.support.api import AppClient, app_client, events, post
from tests.support.servers import INTERNAL, INTERNAL_SECRET
from tests.support.targets import RedisTarget
from tests.support.upstream import FakeUpstream, Reply, running_upstream
from tests.support.waiting import wait_until

SUBS = ("a", "b", "c")
QUOTA = {
    "error": {
        "message": "You exceeded your current quota, please check your plan and billing details.",
        "type": "insufficient_quota",
        "code": "insufficient_quota",
    }
}
RATE_LIMIT = {
    "error": {"message": "Rate limit reached for requests", "code": "rate_limit_exceeded"}
}
BAD_KEY = {"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}}


@asynccontextmanager
async def served(
    url: str,
    folder: Path,
    upstream: FakeUpstream,
    metrics: Metrics | None = None,
    **settings: Any,
) -> AsyncIterator[AppClient]:
    """Agents `duo` (sub-a, sub-b), `trio` (sub-a, sub-b, sub-c) and `solo` (sub-a), whose
    subscriptions' keys are `key-of-<x>`, in an app whose client sends the internal secret."""
    upstream.otherwise = Reply(deltas=("all ", "good"))
    async with running_upstream(upstream) as base_url:
        subscriptions = "".join(
            f"[[subscriptions]]\nid='sub-{s}'\nbase_url='{base_url}'\napi_key_env='KEY_{s}'\n"
            for s in SUBS
        )
        agents = {"duo": "'sub-a','sub-b'", "trio": "'sub-a','sub-b','sub-c'", "solo": "'sub-a'"}
        path = folder / "agents.toml"
        path.write_text(
            subscriptions
            + "".join(
                f"[[agents]]\nid='{a}'\nbackend='openai'\nmodel='m'\nsubscriptions=[{subs}]\n"
                for a, subs in agents.items()
            )
        )
        config = load_agents_file(path, {f"KEY_{s}": f"key-of-{s}" for s in SUBS})
        registry = AgentRegistry(
            {a: OpenAIAgent(config.agents[a], backoff_base=0.01) for a in agents}, config=config
        )
        async with app_client(
            url,
            agents=registry,
            metrics=metrics,
            headers=INTERNAL,
            internal_secret=INTERNAL_SECRET,
            **settings,
        ) as api:
            yield api


async def standing(api: AppClient, agent: str) -> dict[str, dict[str, Any]]:
    state = (await api.get(f"/internal/agents/{agent}")).json()
    return {s["id"]: s for s in state["subscriptions"]}


async def run(api: AppClient, agent: str, session: str = "s", wait: float = 10) -> dict[str, Any]:
    answer: dict[str, Any] = (
        await post(api, session, "hi", agent_id=agent, wait=wait, expect=200)
    ).json()
    return answer


async def test_a_burst_rate_limited_on_a_switches_once_and_a_comes_back_after_its_retry_after(
    target_redis: Redis, redis_target: RedisTarget, tmp_path: Path
) -> None:
    upstream = FakeUpstream().refuse("key-of-a", 429, RATE_LIMIT, headers={"retry-after": "2"})
    metrics = Metrics()
    async with served(redis_target.url, tmp_path, upstream, metrics) as api:
        runs = await asyncio.gather(*(run(api, "duo", f"s{i}") for i in range(10)))
        assert [(r["status"], r["subscription"]) for r in runs] == [("completed", "sub-b")] * 10
        found = await events(api, "duo")
        assert [(e["from"], e["to"], e["kind"]) for e in found] == [
            ("sub-a", "sub-b", "rate_limit")
        ]
        a = (await standing(api, "duo"))["sub-a"]
        assert (a["state"], a["kind"], a["assigned"]) == ("cooling", "rate_limit", False)
        assert 0 < a["retry_in"] <= 2
        refused = a["refusals"]["rate_limit"]
        assert refused >= 1
        samples = metrics.registry.get_sample_value(
            "leasegate_subscription_refusals_total", {"kind": "rate_limit"}
        )
        assert samples == refused

        async def a_is_back() -> bool:
            return bool((await standing(api, "duo"))["sub-a"]["state"] == "active")

        await wait_until(a_is_back, 5, "sub-a to come back after its Retry-After")
        later = (
            await api.post(
                "/internal/agents/duo/subscription-failures",
                json={"subscription_id": "sub-b", "kind": "rate_limit"},
            )
        ).json()
        assert later == {"switched": True, "from": "sub-b", "to": "sub-a", "reason": "switched"}


async def test_insufficient_quota_cools_a_for_the_quota_cooldown(
    target_redis: Redis, redis_target: RedisTarget, tmp_path: Path
) -> None:
    upstream = FakeUpstream().refuse("key-of-a", 429, QUOTA)
    async with served(redis_target.url, tmp_path, upstream, cooldown_quota_seconds=5000) as api:
        done = await run(api, "duo")
        assert (done["status"], done["subscription"]) == ("completed", "sub-b")
        a = (await standing(api, "duo"))["sub-a"]
        assert (a["state"], a["kind"], a["refusals"]) == ("cooling", "quota", {"quota": 1})
        assert 4990 < a["retry_in"] <= 5000


async def test_a_bad_key_is_disabled_until_an_operator_enables_it(
    target_redis: Redis, redis_target: RedisTarget, tmp_path: Path
) -> None:
    upstream = FakeUpstream().refuse("key-of-a", 401, BAD_KEY)
    async with served(redis_target.url, tmp_path, upstream) as api:
        done = await run(api, "duo")
        assert (done["status"], done["subscription"]) == ("completed", "sub-b")
        a = (await standing(api, "duo"))["sub-a"]
        assert (a["state"], a["kind"], a["until"], a["retry_in"]) == (
            "disabled",
            "auth",
            None,
            None,
        )
        refusal = {"subscription_id": "sub-b", "kind": "rate_limit", "cooldown_seconds": 1}
        failures = "/internal/agents/duo/subscription-failures"
        stuck = (await api.post(failures, json=refusal)).json()
        assert (stuck["reason"], stuck["to"]) == ("no_alternative", "sub-b")
        assert 0 < stuck["retry_in"] <= 1  # sub-b's own second; sub-a is not coming back

        enabled = await api.post("/internal/agents/duo/subscriptions/sub-a/enable")
        assert enabled.json() == {"agent_id": "duo", "subscription_id": "sub-a", "was": "disabled"}
        a = (await standing(api, "duo"))["sub-a"]
        assert (a["state"], a["refusals"]) == ("active", {"auth": 1})
        moved = (await api.post(failures, json=refusal)).json()
        assert (moved["switched"], moved["to"]) == (True, "sub-a")
        unknown = await api.post("/internal/agents/duo/subscriptions/sub-c/enable")
        assert unknown.status_code == 422


async def test_a_single_subscription_agent_waits_out_a_short_rate_limit_on_its_only_key(
    target_redis: Redis, redis_target: RedisTarget, tmp_path: Path
) -> None:
    upstream = FakeUpstream().refuse(
        "key-of-a", 429, RATE_LIMIT, headers={"retry-after": "2"}, seconds=2
    )
    async with served(redis_target.url, tmp_path, upstream) as api:
        runs = await asyncio.gather(*(run(api, "solo", f"s{i}") for i in range(5)))
        assert [(r["status"], r["subscription"], r["output"]) for r in runs] == [
            ("completed", "sub-a", "all good")
        ] * 5
        state = (await api.get("/internal/agents/solo")).json()
    assert state["switch_count"] == 0
    assert set(upstream.keys_used()) == {"key-of-a"}
    assert upstream.keys_used().count("key-of-a") >= 10  # refused once, then served, each


async def test_a_long_rate_limit_or_a_quota_with_no_alternative_fails_with_the_wait(
    target_redis: Redis, redis_target: RedisTarget, tmp_path: Path
) -> None:
    upstream = FakeUpstream().refuse("key-of-a", 429, RATE_LIMIT, headers={"retry-after": "120"})
    async with served(redis_target.url, tmp_path, upstream) as api:
        started = asyncio.get_running_loop().time()
        failed = await run(api, "solo")
        assert asyncio.get_running_loop().time() - started < 5  # it did not wait 120 s
        assert failed["status"] == "failed"
        assert failed["error"].startswith("subscriptions_exhausted: ")
        assert "comes back in 120 s" in failed["error"]
        upstream.refuse("key-of-a", 429, QUOTA)
        await api.post("/internal/agents/solo/subscriptions/sub-a/enable")
        quota = await run(api, "solo", "t")
        assert quota["status"] == "failed" and "comes back in 7200 s" in quota["error"]


async def test_a_three_subscription_agent_refused_on_a_and_b_completes_on_c(
    target_redis: Redis, redis_target: RedisTarget, tmp_path: Path
) -> None:
    upstream = (
        FakeUpstream()
        .refuse("key-of-a", 429, RATE_LIMIT, headers={"x-ratelimit-reset-requests": "1m30s"})
        .refuse("key-of-b", 402, {"error": {"message": "Payment required"}})
    )
    async with served(redis_target.url, tmp_path, upstream) as api:
        done = await run(api, "trio")
        assert (done["status"], done["subscription"], done["output"]) == (
            "completed",
            "sub-c",
            "all good",
        )
        subs = await standing(api, "trio")
    assert upstream.keys_used() == ["key-of-a", "key-of-b", "key-of-c"]
    assert (subs["sub-a"]["kind"], subs["sub-b"]["kind"]) == ("rate_limit", "quota")
    assert 80 < subs["sub-a"]["retry_in"] <= 90
    assert subs["sub-c"]["assigned"] and subs["sub-c"]["state"] == "active"
