"""`python` agents: an object of your own (or a factory of one) named by its entrypoint."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from app.agents import AgentRegistry, AgentRequest, RunEvent
from app.errors import AgentsConfigError
from tests.support.api import app_client, post, wait_status
from tests.support.settings import make_settings
from tests.support.targets import RedisTarget
from tests.support.waiting import wait_until

HERE = "tests.test_agents_python"
SEEN: list[AgentRequest] = []
CANCELLED: list[str] = []


class ReverseAgent:
    """A class: leasegate calls it once, with no arguments, to build the agent."""

    async def stream(self, request: AgentRequest) -> AsyncIterator[str]:
        SEEN.append(request)
        history = await request.history() if request.history else []
        yield f"[{len(history)}] "
        yield request.text[::-1]

    async def aclose(self) -> None:
        """Nothing to close."""


class WaitingAgent:
    """Streams a little, then waits until it is cancelled, and says so."""

    async def stream(self, request: AgentRequest) -> AsyncIterator[str]:
        yield "thinking"
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            CANCELLED.append(request.run.run_id if request.run else "")
            raise

    async def aclose(self) -> None:
        """Nothing to close."""


WAITING = WaitingAgent()
"""An object: used as it is."""


class NoAclose:
    async def stream(self, request: AgentRequest) -> AsyncIterator[str]:
        yield "x"


class ReturnsInsteadOfYielding:
    async def stream(self, request: AgentRequest) -> str:
        return "x"

    async def aclose(self) -> None:
        """Nothing to close."""


def failing_factory() -> ReverseAgent:
    raise RuntimeError("no database")


async def async_factory() -> ReverseAgent:
    return ReverseAgent()


NOT_AN_AGENT = 42


def registry(tmp_path: Path, entrypoint: str) -> AgentRegistry:
    path = tmp_path / "agents.toml"
    path.write_text(f"[[agents]]\nid='mine'\nbackend='python'\nentrypoint='{entrypoint}'\n")
    return AgentRegistry.from_settings(make_settings("redis://127.0.0.1:1/0", agents_file=path))


async def test_a_python_agent_runs_with_the_run_and_the_session_history(
    target_redis: Redis, redis_target: RedisTarget, tmp_path: Path
) -> None:
    SEEN.clear()
    agents = registry(tmp_path, f"{HERE}:ReverseAgent")
    async with app_client(redis_target.url, agents=agents) as api:
        first = (await post(api, "py-1", "abc", agent_id="mine", wait=10, expect=200)).json()
        second = (await post(api, "py-1", "xyz", agent_id="mine", wait=10, expect=200)).json()
    assert (first["status"], first["output"]) == ("completed", "[0] cba")
    assert (second["status"], second["output"]) == ("completed", "[2] zyx")
    run = SEEN[-1].run
    assert run is not None
    assert (run.tenant, run.session_id, run.run_id) == ("default", "py-1", second["run_id"])
    assert run.fence == second["fence"] > first["fence"]


async def test_a_stopped_python_agent_sees_its_cancellation(
    target_redis: Redis, redis_target: RedisTarget, tmp_path: Path
) -> None:
    CANCELLED.clear()
    agents = registry(tmp_path, f"{HERE}:WAITING")
    async with app_client(redis_target.url, agents=agents) as api:
        run_id = (await post(api, "py-2", "go", agent_id="mine", expect=202)).json()["run_id"]
        await wait_status(api, run_id, "running")
        assert (await api.post("/v1/sessions/py-2/stop")).status_code == 200

        async def cancelled() -> bool:
            return [run_id] == CANCELLED

        await wait_until(cancelled, 5, "the agent to see its cancellation")
        assert (await wait_status(api, run_id, "cancelled"))["output"] == "thinking"


@pytest.mark.parametrize(
    ("entrypoint", "message"),
    [
        ("no_such_package.agents:agent", "cannot be imported: ModuleNotFoundError"),
        (f"{HERE}:Missing", f"{HERE} has no 'Missing'"),
        (f"{HERE}:NOT_AN_AGENT", "names a int that has no stream\\(request\\) method"),
        (f"{HERE}:NoAclose", "built a NoAclose that has no `async def aclose\\(\\)` method"),
        (f"{HERE}:ReturnsInsteadOfYielding", "without `yield` \\(it must be an async generator"),
        (f"{HERE}:failing_factory", "the factory raised RuntimeError: no database"),
        (f"{HERE}:async_factory", "the factory is async"),
    ],
)
def test_a_bad_entrypoint_is_refused_with_one_clear_message(
    tmp_path: Path, entrypoint: str, message: str
) -> None:
    with pytest.raises(AgentsConfigError, match=message) as refused:
        registry(tmp_path, entrypoint)
    assert f"python agent 'mine': entrypoint '{entrypoint}'" in str(refused.value)


def test_an_entrypoint_must_be_module_colon_attribute(tmp_path: Path) -> None:
    with pytest.raises(AgentsConfigError, match="entrypoint"):
        registry(tmp_path, "just_a_module")


STATES: list[dict[str, object]] = []


class CountingAgent:
    """Keeps a counter in the session's agent state: a snapshot at first, then deltas."""

    async def stream(self, request: AgentRequest) -> AsyncIterator[str | RunEvent]:
        state = await request.state() if request.state else {}
        STATES.append(state)
        if "count" not in state:
            yield RunEvent("state_snapshot", {"snapshot": {"count": 1, "notes": []}})
        else:
            patch = [
                {"op": "replace", "path": "/count", "value": int(str(state["count"])) + 1},
                {"op": "add", "path": "/notes/-", "value": request.text},
            ]
            yield RunEvent("state_delta", {"delta": patch})
        yield "counted"

    async def aclose(self) -> None:
        """Nothing to close."""


async def test_the_agent_state_is_kept_between_runs_with_its_patches_applied(
    target_redis: Redis, redis_target: RedisTarget, tmp_path: Path
) -> None:
    STATES.clear()
    agents = registry(tmp_path, f"{HERE}:CountingAgent")
    async with app_client(redis_target.url, agents=agents) as api:
        for text in ("one", "two", "three"):
            run = (await post(api, "py-state", text, agent_id="mine", wait=10, expect=200)).json()
            assert run["status"] == "completed"
        state = (await api.get("/v1/sessions/py-state")).json()
        await api.post("/v1/sessions/py-state/reset")  # a new conversation starts afresh
        await post(api, "py-state", "four", agent_id="mine", wait=10, expect=200)
    assert STATES == [{}, {"count": 1, "notes": []}, {"count": 2, "notes": ["two"]}, {}]
    assert state["agent_state"] == {"count": 3, "notes": ["two", "three"]}
