"""Drain-aware reload across real processes: a 4-worker server and a second server process
on one redis-server, and an AG-UI agent (a process of its own) that holds its subscription
itself and is told of a switch through its reload hook (`tests/support/reload_agent.py`)."""

from __future__ import annotations

import asyncio
import functools
import json
import signal
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from redis.asyncio import Redis

from app.keys import session_keys
from app.redis import as_text
from app.redis.server import RedisServer, free_port
from tests.support.api import post, run_of, wait_status
from tests.support.reload_agent import ReloadAgent, running_reload_agent
from tests.support.servers import (
    API_KEYS,
    INTERNAL,
    INTERNAL_SECRET,
    base_env,
    client,
    server_process,
    single_process_servers,
    uvicorn_command,
)
from tests.support.waiting import wait_until

pytestmark = pytest.mark.multiprocess

KEYS = {"RELOAD_KEY_A": "key-of-a", "RELOAD_KEY_B": "key-of-b", "RELOAD_KEY_C": "key-of-c"}
HOLD_ON_A = {"hold_on": "sub-a"}


def agents_file(folder: Path, agent: ReloadAgent) -> Path:
    subscriptions = "".join(
        f"[[subscriptions]]\nid = 'sub-{s}'\napi_key_env = 'RELOAD_KEY_{s.upper()}'\n"
        for s in "abc"
    )
    agents = {
        "duo": ("['sub-a', 'sub-b']", 120),
        "trio": ("['sub-a', 'sub-b', 'sub-c']", 120),
        "quick": ("['sub-a', 'sub-b']", 1),
        "ungated": ("['sub-a', 'sub-b']", None),
    }
    path = folder / "reload-agents.toml"
    path.write_text(
        subscriptions
        + "".join(
            f"[[agents]]\nid = '{name}'\nbackend = 'ag-ui'\nurl = '{agent.url('/agent')}'\n"
            f"subscriptions = {subs}\n"
            + (
                f"reload_url = '{agent.url('/reload')}'\ndrain_timeout_seconds = {drain}\n"
                if drain
                else ""
            )
            for name, (subs, drain) in agents.items()
        )
    )
    return path


def environment(redis_url: str, folder: Path, agent: ReloadAgent) -> dict[str, str]:
    return base_env(
        LEASEGATE_AGENTS_FILE=str(agents_file(folder, agent)),
        LEASEGATE_REDIS_URL=redis_url,
        LEASEGATE_LEASE_TTL_SECONDS="3",
        LEASEGATE_SWITCH_LEASE_TTL_SECONDS="2",
        LEASEGATE_SWEEP_INTERVAL_SECONDS="1",
        LEASEGATE_SHUTDOWN_GRACE_SECONDS="1",
        LEASEGATE_LOG_LEVEL="WARNING",
        LEASEGATE_API_KEYS=json.dumps(API_KEYS),
        LEASEGATE_INTERNAL_SECRET=INTERNAL_SECRET,
        **KEYS,
    )


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReloadAgent]:
    with running_reload_agent(tmp_path_factory.mktemp("reload-agent") / "agent.log") as running:
        yield running


@pytest.fixture(scope="module")
def fleet(
    redis_server: RedisServer, agent: ReloadAgent, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    """A 4-worker server and a 1-worker second process with the reloading agents."""
    logs = tmp_path_factory.mktemp("reload-servers")
    env = environment(redis_server.url, logs, agent)
    urls: list[str] = []
    with (
        server_process(*_server(4, env, logs / "four.log", urls)),
        server_process(*_server(1, env, logs / "one.log", urls)),
    ):
        yield urls[0], urls[1]


def _server(
    workers: int, env: dict[str, str], log: Path, urls: list[str]
) -> tuple[list[str], dict[str, str], Path, str]:
    port = free_port()
    urls.append(f"http://127.0.0.1:{port}")
    return uvicorn_command(port, workers), env, log, urls[-1]


async def test_runs_in_flight_finish_on_a_and_new_runs_start_on_b_after_one_reload(
    fleet: tuple[str, str], agent: ReloadAgent, redis: Redis
) -> None:
    four, other = fleet
    await agent.control(reset=True)
    servers = [four, other]
    held = [
        (await post(servers[i % 2], f"held-{i}", "hi", agent_id="duo", metadata=HOLD_ON_A))
        for i in range(5)
    ]
    held_ids = [r.json()["run_id"] for r in held]
    await wait_until(lambda: _streaming(agent, held_ids), 10, "5 runs in flight on sub-a")
    await agent.control(refusing=["sub-a"])
    # A burst of refusals on A over both servers: one switch, one gate, one reload.
    burst = [
        asyncio.create_task(
            post(servers[i % 2], f"burst-{i}", "go", agent_id="duo", wait=30, expect=200)
        )
        for i in range(6)
    ]
    async with client(four, INTERNAL) as ops:
        await wait_until(lambda: _gate(ops, "duo", "closed"), 10, "the gate to close")
        late = [
            (await post(servers[i % 2], f"late-{i}", "hi", agent_id="duo")).json()["run_id"]
            for i in range(3)
        ]
        for run_id in late:
            await wait_until(functools.partial(_waits, four, run_id), 10, "a run at the gate")
            assert (await run_of(four, run_id))["started_at"] is None  # not started yet
        assert (await agent.report())["reloads"] == []  # draining: the 5 still run on A
        assert not [r for r in (await agent.report())["runs"] if r["run_id"] in late]
        released = datetime.now(UTC)
        await agent.control(release=True)
        for run_id in held_ids:
            run = await wait_status(four, run_id, "completed")
            assert (run["output"], run["subscription"]) == ("on sub-a, done", "sub-a")
        for task in burst:
            run = (await task).json()
            assert (run["status"], run["subscription"]) == ("completed", "sub-b"), run
            assert run["output"] == "on sub-b, done"
        for run_id in late:
            run = await wait_status(other, run_id, "completed")
            assert (run["output"], run["subscription"]) == ("on sub-b, done", "sub-b")
            assert datetime.fromisoformat(run["started_at"]) > released  # after the gate
        state = (await ops.get("/internal/agents/duo")).json()
        assert state["subscription"] == "sub-b" and state["gate"]["state"] == "open"
        kinds = [e["type"] for e in (await ops.get("/internal/events")).json()["events"]]
    report = await agent.report()
    assert [(r["subscription"], r["ok"], r["api_key"]) for r in report["reloads"]] == [
        ("sub-b", True, "key-of-b")
    ]
    # Nothing reached the agent on a subscription it did not hold.
    assert unheld(report) == []
    assert kinds.count("agent_gate_closed") == 1
    assert kinds.count("subscription_switched") == 1
    assert kinds.count("agent_gate_opened") == 1


async def test_a_failed_reload_sends_nothing_on_that_subscription(
    fleet: tuple[str, str], agent: ReloadAgent, redis: Redis
) -> None:
    four, other = fleet
    await agent.control(reset=True, refusing=["sub-a"], reload_fail=["sub-b"])
    # With a third subscription, the next viable one is reloaded instead.
    done = await post(four, "trio-1", "go", agent_id="trio", wait=30, expect=200)
    assert (done.json()["status"], done.json()["subscription"]) == ("completed", "sub-c")
    report = await agent.report()
    assert [(r["subscription"], r["ok"]) for r in report["reloads"]] == [
        ("sub-b", False),
        ("sub-c", True),
    ]
    # With none, the gate stays closed, the failure in view, the runs waiting.
    waiting = (await post(other, "duo-1", "go", agent_id="duo")).json()["run_id"]
    async with client(four, INTERNAL) as ops:
        await wait_until(lambda: _gate(ops, "duo", "closed", "failed"), 10, "the reload to fail")
        gate = (await ops.get("/internal/agents/duo")).json()["gate"]
        assert gate["failed_subscription"] == "sub-b" and "cannot load" in gate["error"]
        assert "key-of-b" not in json.dumps(gate)
        await wait_until(lambda: _waits(four, waiting), 10, "the run waiting at the gate")
        events = (await ops.get("/internal/events", params={"agent_id": "duo"})).json()["events"]
        assert any(e["type"] == "agent_reload_failed" for e in events)
        assert not [r for r in (await agent.report())["runs"] if "sub-b" in r.values()]
        # A run with a start deadline does not wait past it.
        expiring = await post(four, "duo-2", "go", agent_id="duo", start_within_seconds=1)
        expired = await wait_status(four, expiring.json()["run_id"], "expired")
        assert "to reload" in expired["error"]
        # An operator acts: the agent is fixed, sub-b assigned; the gate opens on it.
        await agent.control(reload_fail=[])
        assigned = await ops.put(
            "/internal/agents/duo/subscription", json={"subscription_id": "sub-b"}
        )
        assert assigned.status_code == 200, assigned.text
        run = await wait_status(other, waiting, "completed")
        assert (run["output"], run["subscription"]) == ("on sub-b, done", "sub-b")
        assert await _gate(ops, "duo", "open")
    assert unheld(await agent.report()) == []


async def test_runs_still_in_flight_at_the_drain_timeout_are_requeued_and_finish_on_b(
    fleet: tuple[str, str], agent: ReloadAgent, redis: Redis
) -> None:
    four, other = fleet
    await agent.control(reset=True)
    held = [
        (await post(url, f"long-{i}", "hi", agent_id="quick", metadata=HOLD_ON_A)).json()["run_id"]
        for i, url in enumerate((four, other))
    ]
    await wait_until(lambda: _streaming(agent, held), 10, "2 runs in flight on sub-a")
    await agent.control(refusing=["sub-a"])
    trigger = await post(four, "trigger", "go", agent_id="quick", wait=30, expect=200)
    assert trigger.json()["subscription"] == "sub-b"
    for run_id in held:  # interrupted after 1 s, re-queued at their head, then run on B
        run = await wait_status(four, run_id, "completed")
        assert (run["output"], run["subscription"]) == ("on sub-b, done", "sub-b")
        tries = [r for r in (await agent.report())["runs"] if r["run_id"] == run_id]
        assert [(r["loaded_at_start"], r["outcome"]) for r in tries] == [
            ("sub-a", "disconnected"),
            ("sub-b", "finished"),
        ]
    for i in range(2):  # the session's event stream says why the run started twice
        entries = cast(
            list[tuple[bytes, dict[bytes, bytes]]],
            await redis.xrange(session_keys("acme", f"long-{i}").events),
        )
        kinds = [as_text(fields[b"type"]) for _, fields in entries]
        assert kinds.count("requeued") == 1 and kinds.count("started") == 2, kinds
    async with client(four, INTERNAL) as ops:
        events = (await ops.get("/internal/events", params={"agent_id": "quick"})).json()["events"]
    assert [e["type"] for e in events].count("agent_drain_timeout") == 1


async def test_a_killed_switch_holder_leaves_the_gate_to_expire_and_runs_go_on(
    redis_server: RedisServer,
    agent: ReloadAgent,
    redis: Redis,
    tmp_path: Path,
) -> None:
    await agent.control(reset=True, refusing=["sub-a"], reload_hold=True)
    env = environment(redis_server.url, tmp_path, agent)
    own = {k: v for k, v in env.items() if k.startswith("LEASEGATE_") or k in KEYS}
    with single_process_servers(redis_server.url, tmp_path, 2, **_set_here(own)) as started:
        (holder_url, holder), (other_url, _) = started
        first = (await post(holder_url, "k-1", "go", agent_id="duo")).json()["run_id"]

        async def reload_held() -> bool:
            return any(r.get("held") for r in (await agent.report())["reloads"])

        await wait_until(reload_held, 10, "the switch holder to call the reload")
        waiting = (await post(other_url, "k-2", "go", agent_id="duo")).json()["run_id"]
        await wait_until(lambda: _waits(other_url, waiting), 10, "a run waiting at the gate")
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        run = await wait_status(other_url, waiting, "completed")
        assert (run["output"], run["subscription"]) == ("on sub-b, done", "sub-b")
        async with client(other_url, INTERNAL) as ops:
            state = (await ops.get("/internal/agents/duo")).json()
            closes = [
                e
                for e in (await ops.get("/internal/events")).json()["events"]
                if e["type"] == "agent_gate_closed"
            ]
        assert state["subscription"] == "sub-b" and state["gate"]["state"] == "open"
        # The gate opened by expiry on the old assignment (never half a switch); the next
        # refusal on it switched again, and this time the agent reloaded.
        assert [(e["from"], e["to"]) for e in closes] == [("sub-a", "sub-b")] * 2
        await wait_status(other_url, first, "lost", "completed")  # its holder is gone
    reloads = (await agent.report())["reloads"]
    assert [(r["subscription"], r["ok"]) for r in reloads] == [("sub-b", False), ("sub-b", True)]


def unheld(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The checker: requests that reached the agent on a subscription it did not hold."""
    return [r for r in report["runs"] if r["forwarded"] != r["loaded_at_start"]]


async def test_the_checker_catches_an_agent_switched_without_its_reload(
    fleet: tuple[str, str], agent: ReloadAgent, redis: Redis
) -> None:
    """The broken variant: an agent without a reload hook is switched at once, and its
    retry reaches it on sub-b while it still holds sub-a."""
    four, _ = fleet
    await agent.control(reset=True, refusing=["sub-a"])
    await post(four, "ungated-1", "go", agent_id="ungated", wait=30, expect=200)
    caught = unheld(await agent.report())
    assert [(r["forwarded"], r["loaded_at_start"]) for r in caught] == [("sub-b", "sub-a")]


def _set_here(env: dict[str, str]) -> dict[str, str]:
    """What `single_process_servers` does not set itself."""
    return {k: v for k, v in env.items() if k not in ("LEASEGATE_REDIS_URL", "LEASEGATE_LOG_LEVEL")}


async def _streaming(agent: ReloadAgent, run_ids: list[str]) -> bool:
    runs = (await agent.report())["runs"]
    return all(any(r["run_id"] == i and r["outcome"] == "running" for r in runs) for i in run_ids)


async def _gate(ops: httpx.AsyncClient, agent_id: str, state: str, phase: str = "") -> bool:
    gate: dict[str, Any] = (await ops.get(f"/internal/agents/{agent_id}")).json()["gate"]
    return gate["state"] == state and (not phase or gate["phase"] == phase)


async def _waits(url: str, run_id: str) -> bool:
    run = await run_of(url, run_id)
    return run["status"] == "queued" and run.get("waiting_for") == "agent_reload"
