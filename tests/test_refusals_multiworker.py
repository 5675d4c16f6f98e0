"""Classified refusals across real processes: a 4-worker server and a second server process
on one redis-server, openai agents on the fake upstream on a real port. Each scenario has
subscriptions of its own (keys `key-<n><x>`), so their refusals do not meet."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from app.redis.server import RedisServer, free_port
from tests.support.servers import (
    API_KEYS,
    INTERNAL,
    INTERNAL_SECRET,
    base_env,
    client,
    server_process,
    uvicorn_command,
)
from tests.support.upstream import FakeUpstream, Reply, running_upstream
from tests.support.waiting import wait_until

pytestmark = pytest.mark.multiprocess

RATE_LIMIT = {"error": {"message": "Rate limit reached for requests", "code": "rate_limit"}}
QUOTA = {"error": {"message": "You exceeded your current quota", "code": "insufficient_quota"}}
BAD_KEY = {"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}}
AGENTS = {"burst": "ab", "quota": "ab", "auth": "ab", "solo": "a", "trio": "abc"}


def agents_file(folder: Path, base_url: str) -> tuple[Path, dict[str, str]]:
    text, keys = "", {}
    for n, (agent, subs) in enumerate(AGENTS.items()):
        for s in subs:
            text += f"[[subscriptions]]\nid = '{agent}-{s}'\nbase_url = '{base_url}'\n"
            text += f"api_key_env = 'KEY_{n}{s.upper()}'\n"
            keys[f"KEY_{n}{s.upper()}"] = f"key-{n}{s}"
        listed = ", ".join(f"'{agent}-{s}'" for s in subs)
        text += f"[[agents]]\nid = '{agent}'\nbackend = 'openai'\nmodel = 'm'\n"
        text += f"subscriptions = [{listed}]\n"
    path = folder / "agents.toml"
    path.write_text(text)
    return path, keys


async def test_refusals_over_four_workers_and_a_second_process(
    redis_server: RedisServer, redis: Redis, tmp_path: Path
) -> None:
    upstream = FakeUpstream()
    upstream.otherwise = Reply(deltas=("all ", "good"))
    upstream.refuse("key-0a", 429, RATE_LIMIT, headers={"retry-after": "2"})
    upstream.refuse("key-1a", 429, QUOTA)
    upstream.refuse("key-2a", 401, BAD_KEY)
    upstream.refuse("key-3a", 429, RATE_LIMIT, headers={"retry-after": "2"}, seconds=2)
    upstream.refuse("key-4a", 429, RATE_LIMIT)
    upstream.refuse("key-4b", 402, {"error": {"message": "Payment required"}})
    async with running_upstream(upstream) as base_url:
        path, keys = agents_file(tmp_path, base_url)
        env = base_env(
            LEASEGATE_AGENTS_FILE=str(path),
            LEASEGATE_REDIS_URL=redis_server.url,
            LEASEGATE_LEASE_TTL_SECONDS="3",
            LEASEGATE_SHUTDOWN_GRACE_SECONDS="1",
            LEASEGATE_LOG_LEVEL="WARNING",
            LEASEGATE_API_KEYS=json.dumps(API_KEYS),
            LEASEGATE_INTERNAL_SECRET=INTERNAL_SECRET,
            **keys,
        )
        four_port, one_port = free_port(), free_port()
        four, one = f"http://127.0.0.1:{four_port}", f"http://127.0.0.1:{one_port}"
        with (
            server_process(uvicorn_command(four_port, 4), env, tmp_path / "four.log", four),
            server_process(uvicorn_command(one_port, 1), env, tmp_path / "one.log", one),
        ):
            async with (
                client(four) as a,
                client(one) as b,
                client(four, INTERNAL) as ops,
                client(one, INTERNAL) as other_ops,
            ):
                await scenarios(upstream, (a, b), ops, other_ops)


async def scenarios(
    upstream: FakeUpstream,
    servers: tuple[httpx.AsyncClient, httpx.AsyncClient],
    ops: httpx.AsyncClient,
    other_ops: httpx.AsyncClient,
) -> None:
    async def run(agent: str, session: str, at: int = 0) -> dict[str, Any]:
        answer = await servers[at % 2].post(
            f"/v1/sessions/{session}/messages",
            params={"wait": 30},
            json={"text": "hi", "agent_id": agent},
        )
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body

    async def standing(agent: str, sub: str, http: httpx.AsyncClient = ops) -> dict[str, Any]:
        state = (await http.get(f"/internal/agents/{agent}")).json()
        found: dict[str, Any] = next(s for s in state["subscriptions"] if s["id"] == sub)
        return found

    # A burst of 20 rate-limited on A (Retry-After: 2): one switch, A back after 2 s.
    burst = await asyncio.gather(*(run("burst", f"burst-{i}", i) for i in range(20)))
    assert {(r["status"], r["subscription"]) for r in burst} == {("completed", "burst-b")}
    found = (await ops.get("/internal/events", params={"agent_id": "burst"})).json()["events"]
    switched = [(e["from"], e["to"]) for e in found if e["type"] == "subscription_switched"]
    assert switched == [("burst-a", "burst-b")]
    a = await standing("burst", "burst-a", other_ops)
    assert (a["state"], a["kind"]) == ("cooling", "rate_limit") and 0 < a["retry_in"] <= 2

    async def a_is_back() -> bool:
        return bool((await standing("burst", "burst-a", other_ops))["state"] == "active")

    await wait_until(a_is_back, 5, "burst-a back among the candidates")

    # insufficient_quota: A cools for the quota cooldown (7200 s by default).
    done = await run("quota", "quota-1", 1)
    assert (done["status"], done["subscription"]) == ("completed", "quota-b")
    a = await standing("quota", "quota-a")
    assert (a["state"], a["kind"]) == ("cooling", "quota") and 7190 < a["retry_in"] <= 7200

    # 401: A disabled until an operator enables it, for every worker.
    done = await run("auth", "auth-1")
    assert (done["status"], done["subscription"]) == ("completed", "auth-b")
    a = await standing("auth", "auth-a", other_ops)
    assert (a["state"], a["kind"], a["until"]) == ("disabled", "auth", None)
    enabled = await other_ops.post("/internal/agents/auth/subscriptions/auth-a/enable")
    assert enabled.json()["was"] == "disabled"
    assert (await standing("auth", "auth-a"))["state"] == "active"

    # One subscription, rate-limited for 2 s: the runs wait and complete on the same key.
    solo = await asyncio.gather(*(run("solo", f"solo-{i}", i) for i in range(5)))
    assert {(r["status"], r["subscription"], r["output"]) for r in solo} == {
        ("completed", "solo-a", "all good")
    }
    assert (await ops.get("/internal/agents/solo")).json()["switch_count"] == 0

    # Refused on A and on B: the run completes on C, its retries not used up.
    done = await run("trio", "trio-1", 1)
    assert (done["status"], done["subscription"]) == ("completed", "trio-c")
    used = [key for key in upstream.keys_used() if key.startswith("key-4")]
    assert used == ["key-4a", "key-4b", "key-4c"]
