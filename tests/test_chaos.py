"""Chaos: two servers with two workers each, 200 sessions, a few thousand mixed requests,
while worker processes are SIGKILLed and Redis restarts once (append-only file on).

At the end: no two runs of one session overlapped; every admitted run reached exactly one
terminal status (counted in each session's event stream); no session is left busy.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from redis.asyncio import Redis

from app.keys import session_keys
from app.redis.server import RedisServer, free_port
from tests.support.checks import run_violations
from tests.support.servers import base_env, server_process, uvicorn_command
from tests.support.waiting import wait_until

pytestmark = pytest.mark.multiprocess

SESSIONS = 200
ACTIONS = 2500
CONCURRENCY = 40
TERMINAL = {"completed", "failed", "cancelled", "interrupted", "timed_out", "lost"}


def worker_pids(supervisor: subprocess.Popen[bytes]) -> list[int]:
    found = subprocess.run(
        ["pgrep", "-P", str(supervisor.pid), "-f", "spawn"], capture_output=True, text=True
    )
    return [int(pid) for pid in found.stdout.split()]


@contextmanager
def two_servers(redis_url: str, logs: Path) -> Iterator[list[tuple[str, Any]]]:
    env = base_env(
        LEASEGATE_REDIS_URL=redis_url,
        LEASEGATE_LEASE_TTL_SECONDS="2",
        LEASEGATE_SWEEP_INTERVAL_SECONDS="1",
        LEASEGATE_REDIS_TIMEOUT_SECONDS="1",
        LEASEGATE_SHUTDOWN_GRACE_SECONDS="1",
        LEASEGATE_LOG_LEVEL="ERROR",
    )
    with ExitStack() as stack:
        servers = []
        for i in range(2):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            process = stack.enter_context(
                server_process(uvicorn_command(port, 2), env, logs / f"chaos-{i}.log", url)
            )
            servers.append((url, process))
        yield servers


class Load:
    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.sessions = [f"chaos-{i}" for i in range(SESSIONS)]
        self.admitted: dict[str, str] = {}  # run id -> session
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.done = 0

    async def act(self, http: httpx.AsyncClient, rng: random.Random) -> None:
        session = rng.choice(self.sessions)
        roll = rng.random()
        try:
            if roll < 0.85:
                policy = rng.choices(["enqueue", "interrupt", "reject"], [70, 10, 20])[0]
                metadata: dict[str, Any] = {"delay_ms": rng.choice([0, 5, 20, 50])}
                if rng.random() < 0.05:
                    metadata["fail"] = "error"
                response = await http.post(
                    f"/v1/sessions/{session}/messages",
                    json={"text": "m", "busy_policy": policy, "metadata": metadata},
                )
                if response.status_code in (200, 202):
                    self.admitted[response.json()["run_id"]] = session
            elif roll < 0.93:
                response = await http.post(f"/v1/sessions/{session}/stop")
            elif roll < 0.96:
                response = await http.post(f"/v1/sessions/{session}/reset")
            else:
                mine = [r for r, s in self.admitted.items() if s == session]
                if not mine:
                    return
                response = await http.post(f"/v1/runs/{rng.choice(mine)}/cancel")
            self.outcomes[str(response.status_code)] += 1
        except httpx.HTTPError as exc:
            self.outcomes[type(exc).__name__] += 1
        finally:
            self.done += 1

    async def run(self, seed: int) -> None:
        rng = random.Random(seed)
        per_task = ACTIONS // CONCURRENCY

        async def client_loop(n: int) -> None:
            async with httpx.AsyncClient(
                base_url=self.urls[n % len(self.urls)], timeout=10
            ) as http:
                for _ in range(per_task):
                    await self.act(http, rng)

        await asyncio.gather(*(client_loop(n) for n in range(CONCURRENCY)))


async def test_chaos(tmp_path: Path) -> None:
    started = time.monotonic()
    redis_server = RedisServer(tmp_path / "redis", extra_args=("--appendfsync", "always")).start()
    try:
        with two_servers(redis_server.url, tmp_path) as servers:
            urls = [url for url, _ in servers]
            load = Load(urls)
            traffic = asyncio.create_task(load.run(seed=20261121))
            kills = 0
            for fraction, action in [(0.2, "kill"), (0.4, "kill"), (0.55, "redis"), (0.7, "kill")]:
                await wait_until(functools.partial(_reached, load, fraction), 120, "progress")
                if action == "kill":
                    _, supervisor = random.choice(servers)
                    pids = worker_pids(supervisor)
                    assert pids, "no worker process found"
                    victim = random.choice(pids)
                    os.kill(victim, signal.SIGKILL)
                    kills += 1
                else:
                    await asyncio.to_thread(redis_server.restart)
            await traffic
            client = Redis.from_url(redis_server.url)
            try:
                report = await _settle_and_check(urls[0], load, client)
            finally:
                await client.aclose()
    finally:
        redis_server.stop()
    print(
        f"\nchaos: {ACTIONS} requests, {len(load.admitted)} runs admitted, {kills} workers "
        f"SIGKILLed, Redis restarted once, in {time.monotonic() - started:.0f} s"
    )
    print(f"chaos: responses {dict(load.outcomes)}")
    print(f"chaos: terminal statuses {dict(report)}")
    assert report["completed"] > 0 and sum(report.values()) >= len(load.admitted)


async def _reached(load: Load, fraction: float) -> bool:
    return load.done >= ACTIONS * fraction


class Settled:
    """Reads every session back through the API once all runs have ended."""

    def __init__(self, http: httpx.AsyncClient, redis: Redis) -> None:
        self.http = http
        self.redis = redis

    async def runs_of(self, session: str) -> list[dict[str, Any]]:
        runs: list[dict[str, Any]] = []
        offset: int | None = 0
        while offset is not None:
            response = await self.http.get(
                f"/v1/sessions/{session}/runs", params={"limit": 100, "offset": offset}
            )
            if response.status_code == 404:
                return []
            runs += response.json()["runs"]
            offset = response.json()["next_offset"]
        return runs

    async def all_terminal(self, sessions: list[str]) -> bool:
        for session in sessions:
            if any(r["status"] not in TERMINAL for r in await self.runs_of(session)):
                return False
        return True

    async def terminal_events(self, session: str) -> collections.Counter[str]:
        counted: collections.Counter[str] = collections.Counter()
        entries = cast(
            list[tuple[bytes, dict[bytes, bytes]]],
            await self.redis.xrange(session_keys("default", session).events),
        )
        for _, fields in entries:
            if fields[b"type"].decode() in TERMINAL:
                counted[fields[b"run_id"].decode()] += 1
        return counted

    async def check_session(self, session: str) -> list[dict[str, Any]]:
        runs = await self.runs_of(session)
        assert run_violations(runs, in_order=False) == [], session  # interrupts jump the queue
        if runs:
            state = (await self.http.get(f"/v1/sessions/{session}")).json()
            assert state["state"] == "idle" and state["queued"] == [], state
        events = await self.terminal_events(session)
        for run in runs:
            assert events[run["run_id"]] == 1, (session, run, events)
        return runs


async def _settle_and_check(url: str, load: Load, redis: Redis) -> collections.Counter[str]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        settled = Settled(http, redis)
        await wait_until(
            lambda: settled.all_terminal(load.sessions), 90, "every run to reach a terminal status"
        )
        statuses: collections.Counter[str] = collections.Counter()
        known: set[str] = set()
        for session in load.sessions:
            runs = await settled.check_session(session)
            known |= {r["run_id"] for r in runs}
            statuses.update(r["status"] for r in runs)
    missing = set(load.admitted) - known
    assert not missing, f"admitted runs that vanished: {sorted(missing)[:5]}"
    return statuses
