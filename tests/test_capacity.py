"""Caps in one app process against a real redis-server: what a waiting run shows, each kind
of cap, priority order, start deadlines, a lost slot, a switch to a capped subscription,
GET /internal/capacity, and no slot left held at rest."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from app.keys import slot_keys
from app.metrics import Metrics
from app.redis.server import RedisServer
from tests.support.agui_agent import running_agui_agent
from tests.support.api import AppClient, app_client, post, run_of, session_state, wait_status
from tests.support.servers import INTERNAL, INTERNAL_SECRET
from tests.support.targets import RedisTarget
from tests.support.topologies import LocalRedisCluster
from tests.support.waiting import wait_until

AGENTS = """
[[subscriptions]]
id = "sub-a"
[[subscriptions]]
id = "sub-b"
max_concurrent_runs = 1
[[subscriptions]]
id = "shared"
max_concurrent_runs = 1

[[agents]]
id = "echo"
backend = "echo"

[[agents]]
id = "capped"
backend = "echo"
max_concurrent_runs = 1

[[agents]]
id = "helper"
backend = "echo"
subscriptions = ["sub-a", "sub-b"]

[[agents]]
id = "on-b"
backend = "echo"
subscriptions = ["sub-b"]

[[agents]]
id = "left"
backend = "echo"
subscriptions = ["shared"]

[[agents]]
id = "right"
backend = "echo"
subscriptions = ["shared"]
"""

SLOW = {"delay_ms": 600}


@asynccontextmanager
async def capped_app(
    redis: RedisServer | str, tmp_path: Path, **settings: Any
) -> AsyncIterator[AppClient]:
    """An app with the agents above, on a redis-server or a Redis URL (the cluster's)."""
    agents = tmp_path / "agents.toml"
    agents.write_text(AGENTS)
    async with app_client(
        redis if isinstance(redis, str) else redis.url,
        metrics=Metrics(),
        agents_file=agents,
        internal_secret=INTERNAL_SECRET,
        **({"lease_ttl_seconds": 2.0} | settings),
    ) as api:
        yield api


async def capacity(api: AppClient) -> dict[str, dict[str, Any]]:
    response = await api.get("/internal/capacity", headers=INTERNAL)
    assert response.status_code == 200, response.text
    return {r["resource"]: r for r in response.json()["resources"]}


async def waits_for(api: AppClient, run_id: str, what: str) -> dict[str, Any]:
    async def shown() -> bool:
        run = await run_of(api, run_id)
        return bool(run["status"] == "queued" and run["waiting_for"] == what)

    await wait_until(shown, 5, f"run {run_id} to wait for {what}")
    return await run_of(api, run_id)


async def started(api: AppClient, body: dict[str, Any], resource: str) -> str:
    """The run of `body`, once it holds a slot of `resource` (its status says `running`
    as soon as its session started it, before it passed its capacity gate)."""
    run_id: str = body["run_id"]

    async def holds() -> bool:
        holders = (await capacity(api)).get(resource, {}).get("holders", [])
        return any(h["run_id"] == run_id for h in holders)

    await wait_until(holds, 5, f"run {run_id} to hold a slot of {resource}")
    return run_id


async def test_a_run_waiting_for_its_agent_shows_queued_and_what_it_waits_for(
    redis: Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    async with capped_app(redis_server, tmp_path) as api:
        first = await started(
            api, (await post(api, "s1", "one", agent_id="capped", metadata=SLOW)).json(), "a:capped"
        )
        second = (await post(api, "s2", "two", agent_id="capped")).json()["run_id"]
        run = await waits_for(api, second, "agent_capacity")
        assert run["status"] == "queued" and run["started_at"] is None  # not started yet
        session = await session_state(api, "s2")
        assert session["state"] == "busy" and session["holder"] is not None
        assert session["active_run"]["waiting_for"] == "agent_capacity"
        seen = (await capacity(api))["a:capped"]
        assert seen["cap"] == 1 and seen["held"] == 1
        assert [h["run_id"] for h in seen["holders"]] == [first]
        assert [w["run_id"] for w in seen["waiters"]] == [second]
        ended = await wait_status(api, second, "completed")
        assert ended["waiting_for"] is None and ended["output"] == "echo: two"
        done = await run_of(api, first)
        assert done["status"] == "completed"
        # it started when its agent got it: after the first run's 600 ms, not at admission
        began = datetime.fromisoformat(ended["started_at"])
        assert began - datetime.fromisoformat(done["started_at"]) >= timedelta(milliseconds=600)
        assert began > datetime.fromisoformat(ended["created_at"]) + timedelta(milliseconds=300)
        assert await redis.zcard(slot_keys("a:capped").holders) == 0
        registry = api.resources.metrics.registry
        waits = registry.get_sample_value(
            "leasegate_capacity_wait_seconds_count", {"kind": "agent", "outcome": "granted"}
        )
        assert waits == 1
        for gauge in ("leasegate_capacity_slots_held", "leasegate_capacity_slots_waiting"):
            assert registry.get_sample_value(gauge, {"resource": "a:capped"}) == 0


async def test_uncapped_agents_take_no_slot(
    redis: Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    async with capped_app(redis_server, tmp_path) as api:
        body = (await post(api, "s", "hi", wait=5)).json()
        assert body["status"] == "completed"
        assert [k async for k in redis.scan_iter("lg:{c:*")] == []


async def test_two_agents_sharing_a_capped_subscription_wait_for_each_other(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with capped_app(redis_server, tmp_path) as api:
        left = (await post(api, "s1", "left", agent_id="left", metadata=SLOW)).json()["run_id"]
        await wait_until(lambda: _held(api, "sub:shared", 1), 5, "left to hold the slot")
        right = (await post(api, "s2", "right", agent_id="right")).json()["run_id"]
        await waits_for(api, right, "subscription_capacity")
        assert (await run_of(api, left))["status"] == "running"
        done = await wait_status(api, right, "completed")
        assert done["subscription"] == "shared"


async def test_after_a_switch_the_run_takes_a_slot_of_its_new_subscription(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with capped_app(redis_server, tmp_path) as api:
        holder = (await post(api, "s1", "holds b", agent_id="on-b", metadata=SLOW)).json()
        await wait_until(lambda: _held(api, "sub:sub-b", 1), 5, "sub-b to be held")
        switched = (
            await post(
                api,
                "s2",
                "refused on a",
                agent_id="helper",
                metadata={"exhausted_subscriptions": ["sub-a"]},
            )
        ).json()["run_id"]
        await waits_for(api, switched, "subscription_capacity")
        assert (await run_of(api, holder["run_id"]))["status"] == "running"
        done = await wait_status(api, switched, "completed")
        assert done["subscription"] == "sub-b"


@pytest.mark.parametrize(
    ("settings", "waiting_for", "resource"),
    [
        ({"tenant_limits": {"default": 1}}, "tenant_capacity", "t:default"),
        ({"tenant_max_concurrent_runs": 1}, "tenant_capacity", "t:default"),
        ({"max_concurrent_runs": 1}, "fleet_capacity", "fleet"),
    ],
    ids=["tenant-limits", "tenant-default", "fleet"],
)
async def test_tenant_and_fleet_caps(
    redis: Redis,
    redis_server: RedisServer,
    tmp_path: Path,
    settings: dict[str, Any],
    waiting_for: str,
    resource: str,
) -> None:
    async with capped_app(redis_server, tmp_path, **settings) as api:
        await started(api, (await post(api, "s1", "one", metadata=SLOW)).json(), resource)
        second = (await post(api, "s2", "two")).json()["run_id"]
        await waits_for(api, second, waiting_for)
        assert (await capacity(api))[resource]["held"] == 1
        await wait_status(api, second, "completed")
        assert await redis.zcard(slot_keys(resource).holders) == 0


async def test_waiting_runs_start_in_priority_order(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with capped_app(redis_server, tmp_path) as api:
        slow = (await post(api, "s0", "x", agent_id="capped", metadata=SLOW)).json()
        await started(api, slow, "a:capped")
        runs = {}
        for n, priority in enumerate([1, 9, 5]):
            body = await post(
                api, f"s{n + 1}", f"p{priority}", agent_id="capped", priority=priority
            )
            runs[priority] = body.json()["run_id"]
            await waits_for(api, runs[priority], "agent_capacity")
        seen = (await capacity(api))["a:capped"]
        assert [w["priority"] for w in seen["waiters"]] == [9, 5, 1]
        ended = [await wait_status(api, runs[p], "completed") for p in (9, 5, 1)]
        started_order = sorted(ended, key=lambda r: r["finished_at"])
        assert [r["input"] for r in started_order] == ["p9", "p5", "p1"]


async def test_a_run_past_its_start_deadline_while_waiting_for_capacity_expires(
    redis: Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    async with capped_app(redis_server, tmp_path) as api:
        first = await started(
            api,
            (await post(api, "s1", "one", agent_id="capped", metadata={"delay_ms": 1500})).json(),
            "a:capped",
        )
        late = (await post(api, "s2", "late", agent_id="capped", start_within_seconds=0.4)).json()[
            "run_id"
        ]
        await waits_for(api, late, "agent_capacity")
        ended = await wait_status(api, late, "expired")
        assert ended["waiting_for"] is None and ended["output"] is None
        assert ended["started_at"] is None  # it never started
        assert (await run_of(api, first))["status"] == "running"
        assert await redis.hlen(slot_keys("a:capped").queue) == 0
        after = (await post(api, "s2", "next", agent_id="echo", wait=5)).json()
        assert after["status"] == "completed"  # the session went on


async def test_a_lost_slot_stops_the_run_loudly(
    redis: Redis, redis_server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with capped_app(
        redis_server, tmp_path, lease_ttl_seconds=1.0, heartbeat_interval_seconds=0.2
    ) as api:
        run_id = (
            await post(api, "s1", "doomed", agent_id="capped", metadata={"delay_ms": 5000})
        ).json()["run_id"]
        await wait_until(lambda: _held(api, "a:capped", 1), 5, "the slot to be held")
        await redis.delete(slot_keys("a:capped").holders)  # as if it had expired
        ended = await wait_status(api, run_id, "failed")
        assert "capacity slot of a:capped lost" in ended["error"]
        losses = api.resources.metrics.registry.get_sample_value(
            "leasegate_capacity_slot_losses_total", {"kind": "agent"}
        )
        assert losses == 1
        assert any("capacity slot a:capped" in r.getMessage() for r in caplog.records)


async def test_no_slot_is_held_at_rest_after_a_thousand_runs(
    target_redis: Redis, redis_target: RedisTarget, tmp_path: Path
) -> None:
    """1,000 capped runs (40 sessions, 25 messages each), on one server and on the
    cluster: afterwards no slot is held and nobody waits."""
    redis = target_redis
    async with capped_app(redis_target.url, tmp_path, max_concurrent_runs=4) as api:
        sessions = [f"s{i}" for i in range(40)]
        run_ids: list[str] = []
        for round_ in range(25):
            bodies = await asyncio.gather(
                *(post(api, s, f"m{round_}", agent_id="capped") for s in sessions)
            )
            assert all(b.status_code == 202 for b in bodies)
            run_ids += [b.json()["run_id"] for b in bodies]

        async def all_done() -> bool:
            seen = await capacity(api)
            return all(r["held"] == 0 and r["waiting"] == 0 for r in seen.values())

        await wait_until(all_done, 60, "every slot to be given back")
        assert len(run_ids) == 1000
        statuses = {(await run_of(api, run_id))["status"] for run_id in run_ids}
        assert statuses == {"completed"}
        for resource in ("a:capped", "fleet"):
            keys = slot_keys(resource)
            assert await redis.zcard(keys.holders) == 0
            assert await redis.hlen(keys.queue) == 0
        gauges = api.resources.metrics.registry.get_sample_value(
            "leasegate_capacity_slots_held", {"resource": "a:capped"}
        )
        assert gauges == 0


async def test_capacity_endpoint_needs_the_internal_secret(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with capped_app(redis_server, tmp_path) as api:
        assert (await api.get("/internal/capacity")).status_code == 401
        body = (await api.get("/internal/capacity", headers=INTERNAL)).json()
        kinds = {(r["kind"], r["name"], r["cap"]) for r in body["resources"]}
        assert kinds == {
            ("agent", "capped", 1),
            ("subscription", "sub-b", 1),
            ("subscription", "shared", 1),
        }
        assert json.dumps(body)  # plain JSON


async def _held(api: AppClient, resource: str, count: int) -> bool:
    held: int | None = (await capacity(api)).get(resource, {}).get("held")
    return held == count


async def test_caps_hold_on_a_cluster(clean_cluster: LocalRedisCluster, tmp_path: Path) -> None:
    agents = tmp_path / "agents.toml"
    agents.write_text(AGENTS)
    async with app_client(
        clean_cluster.url,
        agents_file=agents,
        internal_secret=INTERNAL_SECRET,
        tenant_max_concurrent_runs=3,
        max_concurrent_runs=3,
    ) as api:
        first = (await post(api, "c0", "first", agent_id="capped", metadata=SLOW)).json()
        await started(api, first, "a:capped")
        second = (await post(api, "c1", "second", agent_id="capped")).json()["run_id"]
        await waits_for(api, second, "agent_capacity")
        bodies = await asyncio.gather(
            *(post(api, f"c{i % 10}", f"m{i}", agent_id="capped") for i in range(30))
        )

        async def at_rest() -> bool:
            seen = await capacity(api)
            return all(r["held"] == 0 and r["waiting"] == 0 for r in seen.values())

        await wait_until(at_rest, 30, "every slot to be given back")
        run_ids = [first["run_id"], second, *(b.json()["run_id"] for b in bodies)]
        assert {(await run_of(api, r))["status"] for r in run_ids} == {"completed"}
        seen = await capacity(api)
        assert {"a:capped", "t:default", "fleet"} <= set(seen)


async def test_a_capped_agui_agent_never_has_more_runs_than_its_cap(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """The real AG-UI test agent (its /slow runs last a minute): of six runs on six
    sessions, only two reach it while four wait; stopping two lets exactly two more in."""
    with running_agui_agent(tmp_path / "agent.log") as agent:
        agents = tmp_path / "agents.toml"
        agents.write_text(
            f"[[agents]]\nid = 'agui'\nbackend = 'ag-ui'\nurl = '{agent.url('/slow')}'\n"
            "max_concurrent_runs = 2\n"
        )
        async with app_client(
            redis_server.url,
            agents_file=agents,
            internal_secret=INTERNAL_SECRET,
        ) as api:
            runs = [
                (await post(api, f"ag{i}", "tick", agent_id="agui")).json()["run_id"]
                for i in range(6)
            ]

            async def reached(count: int) -> bool:
                return len((await agent.report())["records"]) == count

            async def waiting() -> list[str]:
                return [r for r in runs if (await run_of(api, r))["waiting_for"]]

            await wait_until(lambda: reached(2), 10, "two runs to reach the agent")
            await wait_until(lambda: _count(waiting, 4), 10, "four runs to wait")
            assert await reached(2)
            first = [r for r in runs if r not in await waiting()]
            cancelled = await api.post("/v1/runs/cancel", json={"run_ids": first})
            assert cancelled.status_code == 200, cancelled.text
            await wait_until(lambda: reached(4), 10, "two more runs to reach the agent")
            await wait_until(lambda: _count(waiting, 2), 10, "two runs to wait")
            assert await reached(4)
            # The waiting ones first, so that no run is granted a slot while it is cancelled.
            last = await waiting()
            await api.post("/v1/runs/cancel", json={"run_ids": last})
            for run_id in last:
                await wait_status(api, run_id, "cancelled")
            await api.post("/v1/runs/cancel", json={"run_ids": runs})
            for run_id in runs:
                await wait_status(api, run_id, "cancelled")


async def _count(source: Callable[[], Awaitable[list[str]]], count: int) -> bool:
    return len(await source()) == count
