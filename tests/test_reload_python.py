"""Drain-aware reload of a `python` agent (`reload_method`), in one process on a real
redis-server; and the agents file's checks of reload hooks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from redis.asyncio import Redis

from app.agents import AgentRegistry
from app.errors import AgentsConfigError
from app.redis.server import RedisServer
from app.subscriptions.agent_call import MAX_WAITS
from tests.support.api import AppClient, app_client, post
from tests.support.reload_agent import LocalReloader
from tests.support.servers import INTERNAL, INTERNAL_SECRET
from tests.support.settings import make_settings
from tests.support.targets import RedisTarget
from tests.support.waiting import wait_until

AGENTS = """
[[subscriptions]]
id = "sub-a"
[[subscriptions]]
id = "sub-b"
api_key_env = "LOCAL_RELOAD_KEY_B"

[[agents]]
id = "local"
backend = "python"
entrypoint = "tests.support.reload_agent:LocalReloader"
reload_method = "{method}"
drain_timeout_seconds = 5
subscriptions = ["sub-a", "sub-b"]
"""


def agents_file(folder: Path, method: str = "reload") -> Path:
    path = folder / "agents.toml"
    path.write_text(AGENTS.format(method=method))
    return path


@asynccontextmanager
async def reloading_app(url: str, folder: Path) -> AsyncIterator[tuple[AppClient, LocalReloader]]:
    """An app on `url` with the agents above, and its python agent `local`."""
    async with app_client(
        url, headers=INTERNAL, agents_file=agents_file(folder), internal_secret=INTERNAL_SECRET
    ) as api:
        agent = api.resources.agents.get("local")
        assert isinstance(agent, LocalReloader)
        yield api, agent


async def test_a_python_agent_is_reloaded_before_any_run_reaches_it_on_the_new_key(
    target_redis: Redis, redis_target: RedisTarget, tmp_path: Path
) -> None:
    """On one server and on a cluster (every gate key in the agent's slot)."""
    async with reloading_app(redis_target.url, tmp_path) as (api, agent):
        assert (await post(api, "p-1", "hi", agent_id="local", wait=10)).json()["output"] == (
            "on sub-a"
        )
        agent.refusing = {"sub-a"}
        run = (await post(api, "p-2", "hi", agent_id="local", wait=10, expect=200)).json()
        assert (run["status"], run["output"], run["subscription"]) == (
            "completed",
            "on sub-b",
            "sub-b",
        )
        assert agent.reloads == ["sub-b"]
        assert agent.runs == [("sub-a", "sub-a"), ("sub-a", "sub-a"), ("sub-b", "sub-b")]
        state = (await api.get("/internal/agents/local")).json()
        assert state["subscription"] == "sub-b"
        assert state["gate"] | {"closed_at": None} == {
            "state": "open",
            "phase": "open",
            "from": "sub-a",
            "to": "sub-b",
            "reason": "auto",
            "closed_at": None,
            "drain_until": None,
            "expires_in_ms": None,
            "error": None,
            "failed_subscription": None,
            "in_flight": {},
        }
        reloads = api.resources.metrics.registry.get_sample_value(
            "leasegate_agent_reloads_total", {"outcome": "ok"}
        )
        assert reloads == 1


async def test_with_no_subscription_to_reload_the_gate_opens_on_the_old_one_when_it_is_back(
    redis_server: RedisServer, redis: Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOCAL_RELOAD_KEY_B", "key-of-b")
    async with reloading_app(redis_server.url, tmp_path) as (api, agent):
        agent.refusing, agent.cooldown, agent.failing = {"sub-a"}, 1.0, {"sub-b"}
        waiting = asyncio.create_task(post(api, "p-1", "hi", agent_id="local", wait=15))

        async def reload_failed() -> bool:
            gate = (await api.get("/internal/agents/local")).json()["gate"]
            return bool(gate["state"] == "closed" and gate["phase"] == "failed")

        await wait_until(reload_failed, 5, "the reload of sub-b to fail")
        gate = (await api.get("/internal/agents/local")).json()["gate"]
        assert gate["failed_subscription"] == "sub-b"
        assert "cannot load [redacted]" in gate["error"] and "key-of-b" not in gate["error"]
        agent.refusing = set()  # sub-a's 1 s cooldown ends: the gate opens on it
        run = (await waiting).json()
        assert (run["status"], run["output"], run["subscription"]) == (
            "completed",
            "on sub-a",
            "sub-a",
        )
        assert agent.reloads == ["sub-b"] and agent.loaded == "sub-a"
        assert all(forwarded == loaded for forwarded, loaded in agent.runs)
        found = (await api.get("/internal/events", params={"agent_id": "local"})).json()
        kinds = [(e["type"], e.get("reloaded")) for e in reversed(found["events"])]
        assert kinds == [
            ("agent_gate_closed", None),
            ("agent_reload_failed", None),
            ("agent_gate_opened", "0"),
        ]
        assert (await api.get("/internal/agents/local")).json()["switch_count"] == 0


async def test_a_run_refused_each_time_the_gate_opens_again_on_its_key_fails_in_the_end(
    redis_server: RedisServer, redis: Redis, tmp_path: Path
) -> None:
    async with reloading_app(redis_server.url, tmp_path) as (api, agent):
        agent.refusing, agent.cooldown, agent.failing = {"sub-a"}, 0.1, {"sub-b"}
        run = (await post(api, "p-1", "hi", agent_id="local", wait=15, expect=200)).json()
        assert run["status"] == "failed"
        assert "refused again on 'sub-a' each time its agent's gate opened on it" in run["error"]
        assert all(forwarded == loaded == "sub-a" for forwarded, loaded in agent.runs)
        assert len(agent.runs) == 1 + MAX_WAITS  # the first try, then a bounded number


def test_a_reload_method_the_agent_does_not_have_stops_start_up(tmp_path: Path) -> None:
    settings = make_settings("redis://127.0.0.1:1/0", agents_file=agents_file(tmp_path, "nope"))
    with pytest.raises(AgentsConfigError, match="reload_method 'nope' is not an async method"):
        AgentRegistry.from_settings(settings)
