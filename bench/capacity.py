"""Capacity benchmark: what a capped run costs over an uncapped one, and slot hand-off.

Run `python -m bench.capacity` (alone; `make bench` does not run it). One redis-server is
started in a temporary directory.

* Cost per run: one leasegate app in this process (its lifespan run, requests through an
  in-process ASGI client), `echo` runs posted one after another to fresh sessions with
  `?wait`, on an uncapped agent, an agent with a cap, and an agent with a cap under a
  tenant cap and a fleet cap too (caps high enough that no run waits: the cost of taking
  and giving back the slots, not of waiting). Round trips are Redis' socket reads of
  client connections (`total_reads_processed`) per run; CPU is this process's CPU per run
  (the in-process client's share is the same in every variant, so the differences are
  the capacity gate's).
* Hand-off latency, of the slot: a holder holds the only slot of a resource while another
  waits in `SlotManager.acquire` (woken on its channel); the time from just before the
  holder's release until the waiter's acquire returns with the slot.
* Hand-off latency, of runs: two runs of an agent capped at 1, on two sessions of one
  in-process app; the second waits for the slot the first holds. The time from the first
  run's agent returning (its slot is given back next) until the second run's agent starts.

Results are printed and written to the "## Capacity" section of docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from app.agents import AgentRegistry
from app.agents.base import AgentRequest
from app.agents.config import AgentConfig, AgentsConfig
from app.locks.slot_scripts import Claim, SlotScripts
from app.locks.slots import SlotManager
from app.main import create_app
from app.redis import create_redis
from app.redis.pubsub import PubSubHub
from app.redis.server import RedisServer
from app.settings import Settings
from bench.redis_cost import Probe
from bench.report import markdown_table, write_section

RUNS = 400
WARMUP = 50
HANDOFFS = 300
TARGET_P99_MS = 5.0
AGENTS = """
[[agents]]
id = "echo"
backend = "echo"

[[agents]]
id = "capped"
backend = "echo"
max_concurrent_runs = 1000
"""


async def run_cost(url: str, folder: Path, agent: str, **caps: Any) -> tuple[float, float]:
    """(round trips, CPU ms) per run of `agent` with these settings."""
    agents = folder / "agents.toml"
    agents.write_text(AGENTS)
    settings = Settings(redis_url=url, agents_file=agents, log_level="WARNING", **caps)
    app = create_app(settings)
    probe = Probe(url)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://leasegate") as http,
    ):

        async def one(n: int) -> None:
            response = await http.post(
                f"/v1/sessions/{agent}-{n}-{time.monotonic_ns()}/messages",
                params={"wait": 10},
                json={"text": "hello", "agent_id": agent},
            )
            assert response.status_code == 200 and response.json()["status"] == "completed"

        for n in range(WARMUP):
            await one(n)
        before, cpu = probe.snapshot(), time.process_time()
        for n in range(RUNS):
            await one(n)
        cpu = time.process_time() - cpu
        spent = probe.snapshot().minus(before)
    probe.close()
    return spent.reads / RUNS, cpu * 1000 / RUNS


async def handoffs(url: str) -> list[float]:
    """Release-to-grant latencies (ms) of a slot with one waiter."""
    redis = create_redis(Settings(redis_url=url))
    hub = PubSubHub(redis)
    hub.start()
    slots = SlotManager(redis, SlotScripts.register(redis), hub, ttl=10, heartbeat_interval=5)
    latencies = []
    try:
        for n in range(HANDOFFS + 20):
            holder, _ = await slots.try_acquire("a:bench", 1, Claim(f"h{n}", "acme", "w"))
            assert holder is not None
            waiting = asyncio.create_task(slots.acquire("a:bench", 1, Claim(f"w{n}", "acme", "w")))
            while not await redis.hlen("lg:{c:a:bench}:queue"):
                await asyncio.sleep(0.001)
            await asyncio.sleep(0.002)  # the waiter is asleep on its channel
            started = time.perf_counter()
            await slots.release(holder)
            slot = await waiting
            if n >= 20:
                latencies.append((time.perf_counter() - started) * 1000)
            await slots.release(slot)
    finally:
        await hub.close()
        await redis.aclose()
    return latencies


class Relay:
    """An agent whose runs last until told to end, noting when each starts and ends."""

    def __init__(self) -> None:
        self.started: asyncio.Queue[str] = asyncio.Queue()
        self.go: dict[str, asyncio.Event] = {}
        self.starts: dict[str, float] = {}
        self.ends: dict[str, float] = {}

    async def stream(self, request: AgentRequest) -> AsyncIterator[str]:
        run_id = request.run.run_id if request.run else ""
        self.starts[run_id] = time.perf_counter()
        go = self.go.setdefault(run_id, asyncio.Event())
        await self.started.put(run_id)
        await go.wait()
        yield "ok"
        self.ends[run_id] = time.perf_counter()

    async def aclose(self) -> None:
        """Nothing to close."""


async def run_handoffs(url: str) -> list[float]:
    """From a run's agent returning until the run waiting for its slot starts its agent (ms)."""
    relay = Relay()
    config = AgentsConfig({"relay": AgentConfig("relay", "python", max_concurrent_runs=1)})
    agents = AgentRegistry({"relay": relay}, config=config)
    app = create_app(Settings(redis_url=url, log_level="WARNING"), agents=agents)
    transport = httpx.ASGITransport(app=app)
    latencies = []
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://leasegate") as http,
    ):

        async def post(session: str) -> str:
            body = {"text": "x", "agent_id": "relay"}
            answer = await http.post(f"/v1/sessions/{session}/messages", json=body)
            run_id: str = answer.json()["run_id"]
            return run_id

        first = await post(f"h-{time.monotonic_ns()}")
        assert await relay.started.get() == first
        for n in range(HANDOFFS + 20):
            second = await post(f"h-{n}-{time.monotonic_ns()}")
            while (await http.get(f"/v1/runs/{second}")).json().get("waiting_for") is None:
                await asyncio.sleep(0.001)
            relay.go.setdefault(first, asyncio.Event()).set()
            assert await relay.started.get() == second
            if n >= 20:
                latencies.append((relay.starts[second] - relay.ends[first]) * 1000)
            first = second
        relay.go.setdefault(first, asyncio.Event()).set()
    return latencies


async def main() -> None:
    with (
        tempfile.TemporaryDirectory() as folder,
        RedisServer(Path(folder), appendonly=False) as server,
    ):
        costs = {
            "uncapped": await run_cost(server.url, Path(folder), "echo"),
            "agent cap": await run_cost(server.url, Path(folder), "capped"),
            "tenant, agent and fleet caps": await run_cost(
                server.url,
                Path(folder),
                "capped",
                tenant_max_concurrent_runs=1000,
                max_concurrent_runs=1000,
            ),
        }
        latencies = sorted(await handoffs(server.url))
        runs = sorted(await run_handoffs(server.url))
        version = Probe(server.url).version()
    base_trips, base_cpu = costs["uncapped"]
    rows = [
        [name, f"{trips:.1f}", f"+{trips - base_trips:.1f}", f"{cpu:.2f}", f"+{cpu - base_cpu:.2f}"]
        for name, (trips, cpu) in costs.items()
    ]
    p50, p99 = percentiles(latencies)
    run_p50, run_p99 = percentiles(runs)
    verdict = "met" if p99 < TARGET_P99_MS else "missed"
    run_verdict = "met" if run_p99 < TARGET_P99_MS else "missed"
    load = os.getloadavg()[0]
    body = (
        f"`python -m bench.capacity`, {datetime.date.today().isoformat()}, redis {version} on "
        f"loopback, {RUNS} echo runs per variant posted one after another (`?wait`), no run "
        "waiting (caps of 1000).\n\n"
        + markdown_table(
            ["variant", "round trips / run", "vs uncapped", "CPU ms / run", "vs uncapped"], rows
        )
        + f"\nSlot hand-off (release until the waiting acquire returns with the slot, one "
        f"waiter woken on its channel, {len(latencies)} hand-offs): p50 {p50:.2f} ms, p99 "
        f"{p99:.2f} ms; target p99 < {TARGET_P99_MS:g} ms: {verdict} (load average "
        f"{load:.1f} on {os.cpu_count()} CPUs while it ran).\n"
        f"\nRun hand-off (a run's agent returns until the run waiting for its slot starts its "
        f"agent: the slot given back, the waiter woken and granted, its waiting_for cleared, "
        f"{len(runs)} hand-offs, one app process): p50 {run_p50:.2f} ms, p99 {run_p99:.2f} ms; "
        f"target p99 < {TARGET_P99_MS:g} ms: {run_verdict}.\n"
    )
    print(body)
    write_section("## Capacity", body)


def percentiles(sorted_ms: list[float]) -> tuple[float, float]:
    return statistics.median(sorted_ms), sorted_ms[int(len(sorted_ms) * 0.99) - 1]


if __name__ == "__main__":
    asyncio.run(main())
