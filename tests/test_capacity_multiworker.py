"""Caps across a 4-worker server and a second server process, on one Redis, with an agent
that records its own concurrency (tests/support/capacity_agent.py): the agent never sees
more runs than its cap, a subscription's cap holds across the agents sharing it, a tenant
flooding an agent delays another tenant's first run by at most one slot release, waiting
runs start by priority, a SIGKILLed worker's slots come back within the slot TTL, and after
500 runs (50 sessions, 10 messages each) no slot is held."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from app.keys import slot_keys
from app.redis import as_text
from app.redis.server import RedisServer, free_port
from tests.support.capacity_agent import keys_of
from tests.support.servers import (
    ACME,
    API_KEYS,
    GLOBEX,
    INTERNAL,
    INTERNAL_SECRET,
    base_env,
    server_process,
    uvicorn_command,
)
from tests.support.waiting import wait_until

pytestmark = pytest.mark.multiprocess

SLOT_TTL = 3.0
AGENT = 'backend = "python"\nentrypoint = "tests.support.capacity_agent:ConcurrencyAgent"\n'
AGENTS = f"""
[[subscriptions]]
id = "shared"
max_concurrent_runs = 2

[[agents]]
id = "conc"
max_concurrent_runs = 3
{AGENT}
[[agents]]
id = "left"
subscriptions = ["shared"]
{AGENT}
[[agents]]
id = "right"
subscriptions = ["shared"]
{AGENT}
[[agents]]
id = "fair"
max_concurrent_runs = 2
{AGENT}
[[agents]]
id = "prio"
max_concurrent_runs = 1
{AGENT}
[[agents]]
id = "kill"
max_concurrent_runs = 3
{AGENT}
[[agents]]
id = "many"
max_concurrent_runs = 8
{AGENT}"""


class Fleet:
    def __init__(self, four_workers: str, other: str, env: dict[str, str], logs: Path) -> None:
        self.four_workers = four_workers
        self.other = other
        self.env = env
        self.logs = logs


@pytest.fixture(scope="module")
def fleet(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    logs = tmp_path_factory.mktemp("capacity-servers")
    agents = logs / "agents.toml"
    agents.write_text(AGENTS)
    env = base_env(
        LEASEGATE_AGENTS_FILE=str(agents),
        LEASEGATE_REDIS_URL=redis_server.url,
        LEASEGATE_LEASE_TTL_SECONDS=str(SLOT_TTL),
        LEASEGATE_SHUTDOWN_GRACE_SECONDS="1",
        LEASEGATE_LOG_LEVEL="WARNING",
        LEASEGATE_API_KEYS=json.dumps(API_KEYS),
        LEASEGATE_INTERNAL_SECRET=INTERNAL_SECRET,
        LEASEGATE_MAX_CONCURRENT_RUNS="60",
        LEASEGATE_TENANT_LIMITS=json.dumps({"acme": 40, "globex": 40}),
    )
    port_a, port_b = free_port(), free_port()
    url_a, url_b = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"
    with (
        server_process(uvicorn_command(port_a, 4), env, logs / "a.log", url_a),
        server_process(uvicorn_command(port_b, 1), env, logs / "b.log", url_b),
    ):
        yield Fleet(url_a, url_b, env, logs)


async def post(http: httpx.AsyncClient, session: str, agent: str, label: str, **extra: Any) -> str:
    metadata = {"label": label} | extra.pop("metadata", {})
    response = await http.post(
        f"/v1/sessions/{session}/messages",
        json={"text": label, "agent_id": agent, "metadata": metadata, **extra},
    )
    assert response.status_code == 202, response.text
    run_id: str = response.json()["run_id"]
    return run_id


async def run_of(http: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    response = await http.get(f"/v1/runs/{run_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def statuses_of(http: httpx.AsyncClient, run_ids: list[str]) -> list[str]:
    found: list[str] = []
    for at in range(0, len(run_ids), 50):
        batch = await asyncio.gather(*(run_of(http, r) for r in run_ids[at : at + 50]))
        found += [run["status"] for run in batch]
    return found


async def all_end(http: httpx.AsyncClient, run_ids: list[str], timeout: float) -> list[str]:
    async def ended() -> bool:
        statuses = await statuses_of(http, run_ids)
        return all(s not in ("queued", "running") for s in statuses)

    await wait_until(ended, timeout, f"{len(run_ids)} runs to end")
    return await statuses_of(http, run_ids)


async def waiting(http: httpx.AsyncClient, run_id: str, what: str) -> None:
    async def shown() -> bool:
        run = await run_of(http, run_id)
        return bool(run["status"] == "queued" and run["waiting_for"] == what)

    await wait_until(shown, 10, f"run {run_id} to wait for {what}")


async def watch_wait(redis: Redis, tenant: str, stop: asyncio.Event) -> int | None:
    """When (ms, Redis clock) the first run of `tenant` began to wait for a slot of agent
    `fair`, read from the slot's queue as fast as Redis answers until `stop` is set; None
    if no look saw it waiting (it waited less than one round trip)."""
    queue = slot_keys("a:fair").queue
    while not stop.is_set():
        for entry in (await redis.hgetall(queue)).values():
            waiter = json.loads(entry)
            if waiter["tenant"] == tenant:
                return int(waiter["since"])
    return None


async def most_in_flight(redis: Redis, group: str) -> int:
    return int(await redis.get(keys_of(group)[1]) or 0)


async def starts(redis: Redis, group: str) -> list[tuple[str, int, int, int]]:
    """(label, Redis time in µs, fence and grant time in ms of the agent slot) of each
    start, in start order."""
    entries = [as_text(e).split() for e in await redis.lrange(keys_of(group)[2], 0, -1)]
    return [(label, int(at), int(fence), int(since)) for label, at, fence, since in entries]


@pytest.fixture
async def both(fleet: Fleet) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    async with (
        httpx.AsyncClient(base_url=fleet.four_workers, headers=ACME, timeout=30) as a,
        httpx.AsyncClient(base_url=fleet.other, headers=ACME, timeout=30) as b,
    ):
        yield a, b


async def test_cap_of_three_holds_for_thirty_sessions_at_once(
    redis: Redis, both: tuple[httpx.AsyncClient, httpx.AsyncClient]
) -> None:
    a, b = both
    run_ids = await asyncio.gather(
        *(
            post(a if i % 2 else b, f"c{i}", "conc", f"c{i}", metadata={"delay_ms": 250})
            for i in range(30)
        )
    )
    assert await all_end(a, list(run_ids), 60) == ["completed"] * 30
    assert await most_in_flight(redis, "conc") == 3
    assert await redis.zcard(slot_keys("a:conc").holders) == 0


async def test_a_subscription_cap_holds_across_the_agents_sharing_it(
    redis: Redis, both: tuple[httpx.AsyncClient, httpx.AsyncClient]
) -> None:
    a, b = both
    run_ids = await asyncio.gather(
        *(
            post(
                a if i % 2 else b,
                f"s{i}",
                "left" if i < 8 else "right",
                f"s{i}",
                metadata={"delay_ms": 200},
            )
            for i in range(16)
        )
    )
    assert await all_end(a, list(run_ids), 60) == ["completed"] * 16
    assert await most_in_flight(redis, "sub:shared") == 2
    assert await most_in_flight(redis, "left") >= 1 and await most_in_flight(redis, "right") >= 1


async def test_a_flooding_tenant_delays_another_tenants_first_run_by_one_release(
    redis: Redis, fleet: Fleet, both: tuple[httpx.AsyncClient, httpx.AsyncClient]
) -> None:
    a, _ = both
    flood = await asyncio.gather(
        *(post(a, f"f{i}", "fair", f"acme{i}", metadata={"delay_ms": 150}) for i in range(40))
    )
    await waiting(a, flood[-1], "agent_capacity")
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch_wait(redis, "globex", stop))
    async with httpx.AsyncClient(base_url=fleet.other, headers=GLOBEX, timeout=30) as g:
        posted = time.time()
        first = await post(g, "g1", "fair", "globex")
        assert await all_end(g, [first], 30) == ["completed"]
    stop.set()
    seen = await watcher
    granted = {label: (at, fence, since) for label, at, fence, since in await starts(redis, "fair")}
    at, fence, granted_at = granted.pop("globex")
    # no look saw it waiting: it was granted within a round trip of beginning to wait
    began = granted_at if seen is None else seen
    # Grants are numbered by their fence. After globex's run began to wait, the first slot
    # freed went to it; only the other slot, if both came free at once, could go to acme.
    overtook = [label for label, (_, f, since) in granted.items() if since > began and f < fence]
    assert len(overtook) <= 1, overtook
    waited = at / 1e6 - posted
    print(
        f"\nglobex's first run started {waited * 1000:.0f} ms after it was posted; acme runs "
        f"granted while it waited: {len(overtook)} (acme: 40 runs of 150 ms on 2 slots; "
        f"its wait {'seen' if seen else 'too short to see'})"
    )
    assert await all_end(a, list(flood), 60) == ["completed"] * 40


async def test_waiting_runs_start_by_priority_and_expire_past_their_deadline(
    redis: Redis, both: tuple[httpx.AsyncClient, httpx.AsyncClient]
) -> None:
    a, b = both
    first = await post(a, "p0", "prio", "first", metadata={"delay_ms": 800})
    await wait_until(lambda: _started(redis, "prio", 1), 10, "the first run to start")
    runs = []
    for n, priority in enumerate([1, 9, 5]):
        runs.append(
            await post(b if n % 2 else a, f"p{n + 1}", "prio", f"p{priority}", priority=priority)
        )
        await waiting(a, runs[-1], "agent_capacity")
    late = await post(a, "p9", "prio", "late", start_within_seconds=0.3)
    assert await all_end(a, [first, *runs, late], 30) == ["completed"] * 4 + ["expired"]
    order = [label for label, *_ in await starts(redis, "prio")]
    assert order == ["first", "p9", "p5", "p1"]


async def test_a_killed_workers_slots_come_back_within_the_slot_ttl(
    redis: Redis, fleet: Fleet, both: tuple[httpx.AsyncClient, httpx.AsyncClient]
) -> None:
    a, _ = both
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with server_process(
        uvicorn_command(port, 1), fleet.env, fleet.logs / "killed.log", url
    ) as victim:
        async with httpx.AsyncClient(base_url=url, headers=ACME, timeout=30) as doomed:
            held = [
                await post(doomed, f"k{i}", "kill", f"held{i}", metadata={"delay_ms": 60_000})
                for i in range(3)
            ]
        await wait_until(lambda: _started(redis, "kill", 3), 10, "3 runs to hold the slots")
        waiters = [await post(a, f"k{i}", "kill", f"next{i}") for i in range(3, 5)]
        for run_id in waiters:
            await waiting(a, run_id, "agent_capacity")
        os.kill(victim.pid, signal.SIGKILL)
        killed = time.monotonic()
        victim.wait()
        assert await all_end(a, waiters, 2 * SLOT_TTL + 5) == ["completed", "completed"]
        back_in = time.monotonic() - killed
        print(f"\nslots of the killed worker came back and the waiting runs ran in {back_in:.2f} s")
        assert back_in < SLOT_TTL + 1.5
    assert held  # those end lost, once the sweeper takes their sessions over


RUNS = 500
"""Runs of the leak test: 1,000 take about 30 s on a loaded 2-core machine, 500 half that."""


async def test_no_slot_is_held_at_rest_after_many_runs(
    redis: Redis, both: tuple[httpx.AsyncClient, httpx.AsyncClient]
) -> None:
    a, b = both
    sessions = [f"m{i}" for i in range(50)]
    run_ids: list[str] = []
    started_at = time.monotonic()
    for round_ in range(10):
        run_ids += await asyncio.gather(
            *(post(a if i % 2 else b, s, "many", f"m{round_}") for i, s in enumerate(sessions))
        )
    await wait_until(lambda: _started(redis, "many", RUNS), 90, f"{RUNS} runs to start")
    statuses = await all_end(a, run_ids, 30)
    took = time.monotonic() - started_at
    print(f"\n{len(run_ids)} capped runs in {took:.1f} s")
    assert statuses == ["completed"] * RUNS
    assert await most_in_flight(redis, "many") <= 8
    for resource in ("a:many", "t:acme", "fleet"):
        keys = slot_keys(resource)
        assert await redis.zcard(keys.holders) == 0, resource
        assert await redis.hlen(keys.queue) == 0, resource
    response = await a.get("/internal/capacity", headers=INTERNAL)
    assert all(r["held"] == 0 for r in response.json()["resources"] if r["name"] != "kill")


async def _started(redis: Redis, group: str, count: int) -> bool:
    return len(await starts(redis, group)) >= count
