"""`busy_policy: steer`: a message sent while a run goes on is delivered into that run when
its agent accepts steering (a python agent that reads its inbox between steps), whichever
worker admits it; otherwise it is queued like `enqueue`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from redis.asyncio import Redis

from app.agents import AgentRegistry, AgentRequest, EchoAgent
from app.metrics import Metrics
from app.redis.server import RedisServer, free_port
from app.sessions import admission
from tests.support.api import AppClient, Target, app_client, post, run_of, wait_status
from tests.support.faultproxy import FaultProxy, evalsha_of
from tests.support.servers import base_env, client, server_process, uvicorn_command
from tests.support.targets import RedisTarget
from tests.support.waiting import wait_until

HERE = "tests.test_steer"


class SteeredAgent:
    """Reads its inbox between steps: one step per message steered to it, until "finish"."""

    accepts_steering = True

    async def stream(self, request: AgentRequest) -> AsyncIterator[str]:
        assert request.inbox is not None
        yield "start;"
        while True:
            messages = await request.inbox.wait()
            for text in messages:
                yield f" got {text};"
            if "finish" in messages:
                return

    async def aclose(self) -> None:
        """Nothing to close."""


class PlainAgent:
    """Declares no steering: works `metadata.seconds` long, then answers."""

    async def stream(self, request: AgentRequest) -> AsyncIterator[str]:
        await asyncio.sleep(float(request.metadata.get("seconds", 0)))
        yield f"plain: {request.text}"

    async def aclose(self) -> None:
        """Nothing to close."""


class HastyAgent:
    """Accepts steering but never reads its inbox: works `metadata.seconds`, then answers."""

    accepts_steering = True

    async def stream(self, request: AgentRequest) -> AsyncIterator[str]:
        await asyncio.sleep(float(request.metadata.get("seconds", 0)))
        yield f"hasty: {request.text}"

    async def aclose(self) -> None:
        """Nothing to close."""


AGENTS = f"""
[[agents]]
id = "echo"
backend = "echo"

[[agents]]
id = "steered"
backend = "python"
entrypoint = "{HERE}:SteeredAgent"

[[agents]]
id = "plain"
backend = "python"
entrypoint = "{HERE}:PlainAgent"
"""


@pytest.fixture(scope="module")
def steer_servers(
    redis_target: RedisTarget, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    """A 4-worker server and a second server process, with the agents above, on one Redis
    server and on the cluster."""
    folder = tmp_path_factory.mktemp("steer")
    (folder / "agents.toml").write_text(AGENTS)
    env = base_env(
        LEASEGATE_REDIS_URL=redis_target.url,
        LEASEGATE_AGENTS_FILE=str(folder / "agents.toml"),
        LEASEGATE_LEASE_TTL_SECONDS="3",
        LEASEGATE_SHUTDOWN_GRACE_SECONDS="1",
        LEASEGATE_LOG_LEVEL="WARNING",
    )
    port_a, port_b = free_port(), free_port()
    url_a, url_b = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"
    with (
        server_process(uvicorn_command(port_a, 4), env, folder / "a.log", url_a),
        server_process(uvicorn_command(port_b, 1), env, folder / "b.log", url_b),
    ):
        yield url_a, url_b


async def steer(to: Target, session: str, text: str, agent: str) -> dict[str, Any]:
    response = await post(to, session, text, busy_policy="steer", agent_id=agent)
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_messages_steered_from_another_server_reach_the_running_agent(
    steer_servers: tuple[str, str],
) -> None:
    holder_side, other_side = steer_servers
    session = "steer-across"
    first = (await post(holder_side, session, "go", agent_id="steered", expect=202)).json()
    await wait_status(holder_side, first["run_id"], "running")
    # Admitted by the other server process: never the worker holding the session.
    answers = [await steer(other_side, session, text, "steered") for text in ("a", "b")]
    answers.append(await steer(holder_side, session, "finish", "steered"))
    for answer in answers:
        assert (answer["run_id"], answer["disposition"]) == (first["run_id"], "steered")
        assert answer["status"] == "running"
    run = await wait_status(other_side, first["run_id"], "completed")
    assert run["output"] == "start; got a; got b; got finish;"
    assert run["steered_inputs"] == ["a", "b", "finish"]
    async with client(other_side, headers={}) as http:
        turns = (await http.get(f"/v1/sessions/{session}/transcript")).json()["turns"]
        runs = (await http.get(f"/v1/sessions/{session}/runs")).json()["runs"]
    assert [(t["role"], t["text"]) for t in turns] == [
        ("user", "go"),
        ("user", "a"),
        ("user", "b"),
        ("user", "finish"),
        ("assistant", run["output"]),
    ]
    assert [r["run_id"] for r in runs] == [first["run_id"]]  # no run of their own


@pytest.mark.parametrize("agent", ["plain", "echo"])
async def test_a_message_for_an_agent_that_does_not_steer_is_queued(
    steer_servers: tuple[str, str], agent: str
) -> None:
    holder_side, other_side = steer_servers
    session = f"no-steer-{agent}"
    slow = {"seconds": 1} if agent == "plain" else {"delay_ms": 1000}
    first = (
        await post(holder_side, session, "busy", agent_id=agent, metadata=slow, expect=202)
    ).json()
    await wait_status(holder_side, first["run_id"], "running")
    queued = await steer(other_side, session, "later", agent)
    assert queued["run_id"] != first["run_id"]
    assert (queued["disposition"], queued["status"]) == ("queued", "queued")
    ended = await wait_status(other_side, queued["run_id"], "completed")
    assert ended["busy_policy"] == "steer" and ended["steered_inputs"] == []
    assert (await run_of(other_side, first["run_id"]))["steered_inputs"] == []


def registry() -> AgentRegistry:
    return AgentRegistry({"echo": EchoAgent(), "steered": SteeredAgent(), "hasty": HastyAgent()})


async def test_a_steered_message_the_agent_never_read_gets_a_run_of_its_own(
    redis: Redis, redis_server: RedisServer
) -> None:
    async with app_client(redis_server.url, agents=registry()) as api:
        slow = {"seconds": 0.5}
        first = (await post(api, "h", "go", agent_id="hasty", metadata=slow, expect=202)).json()
        await wait_status(api, first["run_id"], "running")
        answers = [await steer(api, "h", text, "hasty") for text in ("x", "y")]
        assert {a["disposition"] for a in answers} == {"steered"}
        ended = await wait_status(api, first["run_id"], "completed")
        assert ended["steered_inputs"] == []  # its agent read none of them

        async def all_done() -> bool:
            runs = (await api.get("/v1/sessions/h/runs")).json()["runs"]
            return len(runs) == 3 and all(r["status"] == "completed" for r in runs)

        await wait_until(all_done, 10, "the unread messages to run on their own")
        runs = (await api.get("/v1/sessions/h/runs")).json()["runs"]
        assert [r["input"] for r in reversed(runs)] == ["go", "x", "y"]
        assert [r["busy_policy"] for r in reversed(runs)][1:] == ["steer", "steer"]
        turns = (await api.get("/v1/sessions/h/transcript")).json()["turns"]
        assert [t["text"] for t in turns] == [
            "go",
            "hasty: go",
            "x",
            "hasty: x",
            "y",
            "hasty: y",
        ]


async def test_a_steered_message_whose_notice_was_lost_arrives_with_a_renewal(
    redis: Redis, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("app.sessions.steering.deliver", lambda *_: None)  # pub/sub lost
    async with app_client(redis_server.url, agents=registry(), lease_ttl_seconds=1.5) as api:
        first = (await post(api, "lost", "go", agent_id="steered", expect=202)).json()
        await wait_status(api, first["run_id"], "running")
        await steer(api, "lost", "a", "steered")
        await steer(api, "lost", "finish", "steered")
        run = await wait_status(api, first["run_id"], "completed")
        assert run["output"] == "start; got a; got finish;"


@pytest.fixture
async def proxy(own_redis_server: RedisServer) -> AsyncIterator[FaultProxy]:
    async with FaultProxy("127.0.0.1", own_redis_server.port) as running:
        yield running


@asynccontextmanager
async def service(proxy: FaultProxy) -> AsyncIterator[AppClient]:
    async with app_client(
        proxy.url, metrics=Metrics(), agents=registry(), lease_ttl_seconds=2.0
    ) as api:
        await api.resources.load_scripts()
        yield api


def sha(api: AppClient, name: str) -> str:
    for script in api.resources.scripts:
        if getattr(script, "name", None) == name:
            return str(script.sha)
    raise AssertionError(f"no script {name}")


@pytest.mark.parametrize("broken", [False, True], ids=["script", "broken-variant"])
async def test_a_steer_resent_is_delivered_once(
    proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch, broken: bool
) -> None:
    if broken:  # no memory of the message it steered: the re-send steers it again
        text = admission.ADMIT
        old = "  if merged then return merged_answer(merged) end\n  if ARGV[7]"
        assert old in text
        monkeypatch.setattr(admission, "ADMIT", text.replace(old, "  if ARGV[7]"))
    async with service(proxy) as api:
        first = (await post(api, "r", "go", agent_id="steered", expect=202)).json()
        await wait_status(api, first["run_id"], "running")
        fault = proxy.drop_reply(evalsha_of(sha(api, "admit")))
        answer = await steer(api, "r", "a", "steered")
        assert fault.fired.is_set()
        await steer(api, "r", "finish", "steered")
        run = await wait_status(api, first["run_id"], "completed", "failed")

        def check() -> None:
            assert answer["disposition"] == "steered"
            assert run["steered_inputs"] == ["a", "finish"]
            assert run["output"] == "start; got a; got finish;"

        if broken:
            with pytest.raises(AssertionError):
                check()
        else:
            check()


async def test_an_idempotent_retry_of_a_steered_message_answers_the_same(
    target_redis: Redis, redis_target: RedisTarget
) -> None:
    """On one server and on the cluster."""
    async with app_client(redis_target.url, agents=registry()) as api:
        first = (await post(api, "i", "go", agent_id="steered", expect=202)).json()
        await wait_status(api, first["run_id"], "running")
        body: dict[str, Any] = {
            "busy_policy": "steer",
            "agent_id": "steered",
            "idempotency_key": "k-1",
        }
        once = (await post(api, "i", "a", expect=202, **body)).json()
        again = (await post(api, "i", "a", expect=202, **body)).json()
        assert once["run_id"] == again["run_id"] == first["run_id"]
        assert again["disposition"] == "steered"
        await steer(api, "i", "finish", "steered")
        run = await wait_status(api, first["run_id"], "completed")
        assert run["steered_inputs"] == ["a", "finish"]
