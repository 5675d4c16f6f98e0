"""`ag-ui` agents: real Pydantic AI agents served over AG-UI in a process of their own, run
through leasegate (in-process app, and a multi-worker server for one run per session)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from redis.asyncio import Redis

from app.agents import AgentRegistry, AgentRequest
from app.agents.agui import AGUIAgent
from app.agents.base import RunContext, Subscription
from app.agents.config import AgentConfig, load_agents_file
from app.errors import AgentFailedError, AgentsConfigError, SubscriptionFailureError
from app.redis.server import free_port
from app.sessions.ref import SessionRef
from tests.support.agui_agent import REFUSED_KEY, AGUIAgentProcess, running_agui_agent
from tests.support.api import app_client, events, post, wait_all_terminal, wait_status
from tests.support.checks import run_violations
from tests.support.scenarios import new_session
from tests.support.servers import (
    API_KEYS,
    INTERNAL,
    INTERNAL_SECRET,
    base_env,
    server_process,
    uvicorn_command,
)
from tests.support.settings import make_settings
from tests.support.targets import RedisTarget
from tests.support.waiting import wait_until

KEYS = {"KEY_A": REFUSED_KEY, "KEY_B": "key-of-b"}
STOP_REACHES_AGENT = 1.0
"""Seconds from the stop request until the agent process sees its request cancelled."""


@pytest.fixture(scope="module")
def agent(
    redis_target: RedisTarget, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AGUIAgentProcess]:
    """The agent process, one per Redis topology: every test that runs an agent through
    leasegate runs on one server and on the cluster, and reads the agent's own records."""
    with running_agui_agent(tmp_path_factory.mktemp("agui") / "agent.log") as running:
        yield running


def agents_toml(url: str, *, subscriptions: bool = False, extra: str = "") -> str:
    subs = (
        "[[subscriptions]]\nid='sub-a'\napi_key_env='KEY_A'\n"
        "[[subscriptions]]\nid='sub-b'\napi_key_env='KEY_B'\n"
        if subscriptions
        else ""
    )
    uses = "subscriptions=['sub-a','sub-b']\n" if subscriptions else ""
    return f"{subs}[[agents]]\nid='agui'\nbackend='ag-ui'\nurl='{url}'\n{uses}{extra}"


def registry(tmp_path: Path, toml: str, environ: dict[str, str] | None = None) -> AgentRegistry:
    path = tmp_path / "agents.toml"
    path.write_text(toml)
    settings = make_settings("redis://127.0.0.1:1/0", agents_file=path)
    return AgentRegistry.from_settings(settings, {} if environ is None else environ)


async def ask(api: httpx.AsyncClient, session: str, text: str) -> dict[str, Any]:
    run: dict[str, Any] = (
        await post(api, session, text, agent_id="agui", wait=20, expect=200)
    ).json()
    return run


@pytest.fixture
async def redis_url(target_redis: Redis, redis_target: RedisTarget) -> str:
    """The topology's Redis (one server or the cluster), emptied for this test."""
    return redis_target.url


async def test_a_run_of_an_agent_that_calls_a_tool_completes_with_its_reply(
    agent: AGUIAgentProcess, redis_url: str, tmp_path: Path
) -> None:
    agents = registry(tmp_path, agents_toml(agent.url("/tool")))
    async with app_client(redis_url, agents=agents) as api:
        run = await ask(api, "tool-1", "weather")
    assert run["status"] == "completed", run
    assert run["output"] == "the tool said: found weather"
    [request] = await agent.records("tool-1")
    assert request["path"] == "/tool" and request["ended"] == "completed"


async def test_the_second_run_receives_the_first_runs_turns(
    agent: AGUIAgentProcess, redis_url: str, tmp_path: Path
) -> None:
    agents = registry(tmp_path, agents_toml(agent.url("/echo")))
    async with app_client(redis_url, agents=agents) as api:
        first = await ask(api, "history-1", "first")
        second = await ask(api, "history-1", "second")
    assert (first["output"], second["output"]) == ("echo: first", "echo: second")
    requests = await agent.records("history-1")
    assert [r["messages"] for r in requests] == [
        [["user", "first"]],
        [["user", "first"], ["assistant", "echo: first"], ["user", "second"]],
    ]


async def test_the_fence_rises_run_after_run_and_the_idempotency_key_is_the_run_id(
    agent: AGUIAgentProcess, redis_url: str, tmp_path: Path
) -> None:
    agents = registry(tmp_path, agents_toml(agent.url("/echo")))
    async with app_client(redis_url, agents=agents) as api:
        runs = [await ask(api, "fence-1", f"m{i}") for i in range(3)]
    requests = await agent.records("fence-1")
    fences = [int(r["fence"]) for r in requests]
    assert fences == sorted(set(fences)) and len(fences) == 3
    assert fences == [r["fence"] for r in runs]
    assert [r["idempotency_key"] for r in requests] == [r["run_id"] for r in runs]
    assert [r["run_id"] for r in requests] == [r["run_id"] for r in runs]
    props = requests[-1]["leasegate"]
    assert props == {
        "agent_id": "agui",
        "tenant": "default",
        "session_id": "fence-1",
        "run_id": runs[-1]["run_id"],
        "fence": fences[-1],
        "generation": runs[-1]["generation"],
        "metadata": {},
    }


async def test_a_stop_reaches_the_agent_as_a_disconnect_within_a_second(
    agent: AGUIAgentProcess, redis_url: str, tmp_path: Path
) -> None:
    agents = registry(tmp_path, agents_toml(agent.url("/slow")))
    async with app_client(redis_url, agents=agents) as api:
        run_id = (await post(api, "slow-1", "go", agent_id="agui", expect=202)).json()["run_id"]

        async def streaming() -> bool:
            return [r["ended"] for r in await agent.records("slow-1")] == [None]

        await wait_until(streaming, 10, "the slow agent to be streaming its reply")
        stopped = time.monotonic()
        assert (await api.post("/v1/sessions/slow-1/stop")).status_code == 200

        async def disconnected() -> bool:
            return [r["ended"] for r in await agent.records("slow-1")] == ["disconnected"]

        await wait_until(disconnected, STOP_REACHES_AGENT, "the agent to see its client leave")
        elapsed = time.monotonic() - stopped
        run = await wait_status(api, run_id, "cancelled")
    assert elapsed < STOP_REACHES_AGENT
    assert run["output"].startswith("tick ")


async def test_a_run_cancelled_as_its_agent_call_starts_ends_cancelled(
    agent: AGUIAgentProcess, redis_url: str, tmp_path: Path
) -> None:
    """40 runs of the streaming agent, each cancelled 0 to 4 round trips after its
    admission, so some cancellations land while the HTTP client connects to the agent (a
    cancellation the client can swallow there: 4 runs in 60 kept streaming, and their
    sessions busy, until the holder learned to cancel again)."""
    agents = registry(tmp_path, agents_toml(agent.url("/slow")))
    async with app_client(redis_url, agents=agents) as api:
        for i in range(40):
            session = f"quick-{i}"
            run_id = (await post(api, session, "go", agent_id="agui", expect=202)).json()["run_id"]
            for _ in range(i % 5):
                await api.get(f"/v1/sessions/{session}")
            await api.post(f"/v1/runs/{run_id}/cancel")
            assert (await wait_status(api, run_id, "cancelled"))["status"] == "cancelled"
            view = (await api.get(f"/v1/sessions/{session}")).json()
            assert view["state"] == "idle", view


@pytest.mark.parametrize("path", ["/refuse-http", "/refuse-event"])
async def test_a_refused_subscription_switches_once_and_the_run_completes_on_b(
    agent: AGUIAgentProcess,
    redis_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    path: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    agents = registry(tmp_path, agents_toml(agent.url(path), subscriptions=True), KEYS)
    session = f"switch-{path.strip('/')}"
    async with app_client(
        redis_url, agents=agents, headers=INTERNAL, internal_secret=INTERNAL_SECRET
    ) as api:
        run = await ask(api, session, "hi")
        found = await events(api, "agui")
    assert (run["status"], run["subscription"], run["output"]) == ("completed", "sub-b", "echo: hi")
    assert [(e["type"], e["from"], e["to"]) for e in found] == [
        ("subscription_switched", "sub-a", "sub-b")
    ]
    assert [r["subscription"] for r in await agent.records(session)] == ["sub-a", "sub-b"]
    assert REFUSED_KEY not in caplog.text and REFUSED_KEY not in json.dumps(run)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/invalid", "ag-ui agent 'agui' sent an invalid TEXT_MESSAGE_CONTENT event (delta: "),
        ("/unfinished", "ag-ui agent 'agui': the event stream ended after its last event, before"),
    ],
)
async def test_an_invalid_event_or_a_stream_without_run_finished_fails_the_run_clearly(
    agent: AGUIAgentProcess, redis_url: str, tmp_path: Path, path: str, expected: str
) -> None:
    agents = registry(tmp_path, agents_toml(agent.url(path)))
    async with app_client(redis_url, agents=agents) as api:
        run = await ask(api, f"broken-{path.strip('/')}", "hi")
    assert run["status"] == "failed"
    assert expected in run["error"], run["error"]
    assert "messageId" not in run["error"]  # what was wrong, not the payload


async def test_headers_from_headers_env_reach_the_agent(
    agent: AGUIAgentProcess, redis_url: str, tmp_path: Path
) -> None:
    toml = agents_toml(agent.url("/echo"), extra="headers_env='AGUI_HEADERS'\n")
    environ = {"AGUI_HEADERS": json.dumps({"Authorization": "Bearer agent-secret"})}
    async with app_client(redis_url, agents=registry(tmp_path, toml, environ)) as api:
        assert (await ask(api, "headers-1", "hi"))["status"] == "completed"
    [request] = await agent.records("headers-1")
    assert request["authorization"] == "Bearer agent-secret"


@pytest.mark.multiprocess
async def test_fifty_concurrent_messages_never_give_the_agent_two_runs_of_a_session(
    agent: AGUIAgentProcess, redis_url: str, tmp_path: Path
) -> None:
    """50 messages to one session from 50 clients, through a 4-worker server."""
    path = tmp_path / "agents.toml"
    path.write_text(agents_toml(agent.url("/echo")))
    env = base_env(
        LEASEGATE_REDIS_URL=redis_url,
        LEASEGATE_AGENTS_FILE=str(path),
        LEASEGATE_API_KEYS=json.dumps(API_KEYS),
        LEASEGATE_LOG_LEVEL="WARNING",
        LEASEGATE_SHUTDOWN_GRACE_SECONDS="1",
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    session = new_session()
    with server_process(uvicorn_command(port, 4), env, tmp_path / "server.log", url):
        await asyncio.gather(
            *(post(url, session, f"m{i}", agent_id="agui", expect=202) for i in range(50))
        )
        runs = await wait_all_terminal(url, session, 50, timeout=90)
    assert {r["status"] for r in runs} == {"completed"}
    assert sorted(r["output"] for r in runs) == sorted(f"echo: m{i}" for i in range(50))
    assert run_violations(runs) == []
    requests = await agent.records(session)
    assert len(requests) == 50
    # each run received the whole conversation before it, in admission order
    outputs = [r["output"] for r in sorted(runs, key=lambda r: r["started_at"])]
    for i, request in enumerate(requests):
        said = [text for role, text in request["messages"] if role == "assistant"]
        assert said == outputs[:i]
    assert await agent.most_in_flight(session) == 1
    fences = [int(r["fence"]) for r in requests]
    assert fences == sorted(set(fences))


async def test_the_agent_process_would_see_two_runs_of_one_thread_at_once(
    agent: AGUIAgentProcess,
) -> None:
    """The instrument of the test above: without leasegate in front, two requests of one
    thread overlap, and the agent process counts them."""
    body = {"threadId": "overlap-1", "runId": "r", "messages": [], "state": {}}

    async def one(http: httpx.AsyncClient, run_id: str) -> None:
        # the slow agent streams for a minute: both runs are in flight until cancelled
        async with http.stream("POST", agent.url("/slow"), json={**body, "runId": run_id}) as r:
            assert r.status_code == 200
            async for _ in r.aiter_bytes():
                pass

    async with httpx.AsyncClient(timeout=10) as http:
        runs = [asyncio.create_task(one(http, run_id)) for run_id in ("r1", "r2")]
        try:
            await wait_until(
                lambda: _most_in_flight_is(agent, "overlap-1", 2),
                10,
                "both runs of the thread in flight at once",
            )
        finally:
            for run in runs:
                run.cancel()
            await asyncio.gather(*runs, return_exceptions=True)


async def _most_in_flight_is(agent: AGUIAgentProcess, thread_id: str, count: int) -> bool:
    return await agent.most_in_flight(thread_id) == count


# -- the backend on its own: retries, refusals, cancellation, the agents file -----------


def sse(*events: dict[str, Any]) -> bytes:
    return b"".join(f"data: {json.dumps(e)}\n\n".encode() for e in events)


STARTED = {"type": "RUN_STARTED", "threadId": "t", "runId": "r"}
TEXT = {"type": "TEXT_MESSAGE_CONTENT", "messageId": "m", "delta": "hello"}
FINISHED = {"type": "RUN_FINISHED", "threadId": "t", "runId": "r"}
REFUSED = {"type": "RUN_ERROR", "message": "refused"}
SUB_A = Subscription("sub-a", None, "secret-key-a")
CONFIG = AgentConfig("agui", "ag-ui", url="http://agent.invalid/run")


class Far:
    """The far end of an AGUIAgent's client: one planned answer per request, recorded."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def stream_of(body: bytes, status: int = 200) -> httpx.Response:
    return httpx.Response(status, content=body, headers={"content-type": "text/event-stream"})


def request(subscription: Subscription | None = SUB_A) -> AgentRequest:
    run = RunContext(tenant="acme", session_id="s", run_id="run-1", fence=7, generation=1)
    return AgentRequest("agui", "hi", subscription=subscription, run=run)


MakeAgent = Callable[..., AGUIAgent]


@pytest.fixture
async def make_agent() -> AsyncIterator[MakeAgent]:
    made: list[AGUIAgent] = []

    def make(far: Far, max_retries: int = 2) -> AGUIAgent:
        agent = AGUIAgent(
            CONFIG, transport=httpx.MockTransport(far), max_retries=max_retries, backoff_base=0
        )
        made.append(agent)
        return agent

    yield make
    for agent in made:
        await agent.aclose()


async def reply(agent: AGUIAgent, req: AgentRequest) -> str:
    return "".join([item async for item in agent.stream(req) if isinstance(item, str)])


async def test_a_5xx_or_a_connection_error_before_the_first_event_is_retried(
    make_agent: MakeAgent,
) -> None:
    far = Far(
        httpx.Response(503, json={"error": {"message": "busy"}}),
        httpx.ConnectError("refused"),
        stream_of(sse(STARTED, TEXT, FINISHED)),
    )
    assert await reply(make_agent(far), request()) == "hello"
    assert [r.headers["idempotency-key"] for r in far.requests] == ["run-1"] * 3
    assert far.requests[0].headers["leasegate-fence"] == "7"


async def test_retries_are_bounded(make_agent: MakeAgent) -> None:
    far = Far(*(httpx.Response(502) for _ in range(3)))
    with pytest.raises(AgentFailedError, match="ag-ui agent 'agui' unavailable: status 502"):
        await reply(make_agent(far, max_retries=2), request())
    assert len(far.requests) == 3


class _BreaksAfter(httpx.AsyncByteStream):
    def __init__(self, first: bytes) -> None:
        self.first = first

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.first
        raise httpx.ReadError("connection reset")


async def test_a_stream_that_breaks_after_the_first_event_is_never_retried(
    make_agent: MakeAgent,
) -> None:
    broken = httpx.Response(
        200, stream=_BreaksAfter(sse(STARTED, TEXT)), headers={"content-type": "text/event-stream"}
    )
    far = Far(broken, stream_of(sse(STARTED, TEXT, FINISHED)))
    with pytest.raises(AgentFailedError, match="broke off after a partial reply"):
        await reply(make_agent(far), request())
    assert len(far.requests) == 1


@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        (httpx.Response(429, json={"error": {"message": "slow down"}}), "rate_limit"),
        (httpx.Response(401), "auth"),
        (httpx.Response(402), "quota"),
        (httpx.Response(403, json={"error": {"message": "Invalid API key"}}), "auth"),
        (
            stream_of(sse(STARTED, {"type": "RUN_ERROR", "message": "m", "code": "quota"})),
            "quota",
        ),
        (stream_of(sse(STARTED, {"type": "RUN_ERROR", "message": "m", "code": "auth"})), "auth"),
    ],
)
async def test_refusals_of_the_subscription_are_classified(
    make_agent: MakeAgent, answer: httpx.Response, kind: str
) -> None:
    with pytest.raises(SubscriptionFailureError) as refused:
        await reply(make_agent(Far(answer)), request())
    assert (refused.value.kind, refused.value.subscription_id) == (kind, "sub-a")


async def test_a_run_error_fails_the_run_with_its_message_and_never_shows_the_key(
    make_agent: MakeAgent,
) -> None:
    failing = {"type": "RUN_ERROR", "message": "tool crashed with secret-key-a", "code": "E42"}
    with pytest.raises(AgentFailedError) as failed:
        await reply(make_agent(Far(stream_of(sse(STARTED, failing)))), request())
    assert not isinstance(failed.value, SubscriptionFailureError)
    assert str(failed.value) == "ag-ui agent 'agui' failed: tool crashed with [redacted] (code E42)"


async def test_a_refusal_after_a_partial_reply_is_a_failure_not_a_switch(
    make_agent: MakeAgent,
) -> None:
    late = {"type": "RUN_ERROR", "message": "m", "code": "rate_limit"}
    with pytest.raises(AgentFailedError, match="after a partial reply") as failed:
        await reply(make_agent(Far(stream_of(sse(STARTED, TEXT, late)))), request())
    assert not isinstance(failed.value, SubscriptionFailureError)


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        (b"data: {nope\n\n", "text/event-stream", "sent an event that is not JSON"),
        (sse({"type": "THINKING_START"}), "text/event-stream", "unknown type 'THINKING_START'"),
        (sse({"delta": "x"}), "text/event-stream", 'an event without a "type"'),
        (b"", "text/event-stream", "ended without any event"),
        (b'{"ok": true}', "application/json", "answered application/json, not an event stream"),
    ],
)
async def test_what_is_not_an_ag_ui_stream_fails_clearly(
    make_agent: MakeAgent, body: bytes, content_type: str, expected: str
) -> None:
    answer = httpx.Response(200, content=body, headers={"content-type": content_type})
    with pytest.raises(AgentFailedError, match=expected):
        await reply(make_agent(Far(answer)), request())


async def test_events_yields_every_validated_event_up_to_the_terminal_one(
    make_agent: MakeAgent,
) -> None:
    tool = {"type": "TOOL_CALL_START", "toolCallId": "c", "toolCallName": "lookup"}
    after = {"type": "CUSTOM", "name": "ignored", "value": 1}
    agent = make_agent(Far(stream_of(sse(STARTED, tool, TEXT, FINISHED, after))))
    kinds = [e.type.value async for e in agent.events(request())]
    assert kinds == ["RUN_STARTED", "TOOL_CALL_START", "TEXT_MESSAGE_CONTENT", "RUN_FINISHED"]


async def test_the_request_is_a_run_agent_input_in_camel_case(make_agent: MakeAgent) -> None:
    far = Far(stream_of(sse(STARTED, FINISHED)))
    await reply(make_agent(far), request())
    body = json.loads(far.requests[0].content)
    assert body["threadId"] == "s" and body["runId"] == "run-1"
    assert body["messages"] == [{"id": "run-1:user", "role": "user", "content": "hi"}]
    assert (body["state"], body["tools"], body["context"]) == ({}, [], [])
    assert body["forwardedProps"]["leasegate"]["subscription"] == {
        "id": "sub-a",
        "base_url": None,
        "api_key": "secret-key-a",
    }
    assert far.requests[0].headers["accept"] == "text/event-stream"


async def test_a_cancelled_stream_closes_its_response(make_agent: MakeAgent) -> None:
    closed = asyncio.Event()

    class _Endless(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield sse(STARTED, TEXT)
            await asyncio.Event().wait()
            yield b""  # pragma: no cover

        async def aclose(self) -> None:
            closed.set()

    endless = httpx.Response(200, stream=_Endless(), headers={"content-type": "text/event-stream"})
    agent = make_agent(Far(endless))
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in agent.stream(request()):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert closed.is_set()


@pytest.mark.parametrize(
    ("extra", "environ", "message"),
    [
        ("headers_env='H'\n", {}, "environment variable H \\(headers_env\\) is not set"),
        ("headers_env='H'\n", {"H": "not json"}, "is not JSON"),
        ("headers_env='H'\n", {"H": "[1]"}, "not a JSON object of headers"),
        ("headers_env='H'\n", {"H": '{"Idempotency-Key": "x"}'}, "set by leasegate itself"),
        ("headers_env='H'\n", {"H": '{"X-A": "a\\nb"}'}, "a string on one line"),
        ("headers_env='H'\n", {"H": '{"bad header": "x"}'}, "not a valid header name"),
        ("model='m'\n", {}, "Extra inputs are not permitted"),
    ],
)
def test_ag_ui_agents_file_errors_are_clear(
    tmp_path: Path, extra: str, environ: dict[str, str], message: str
) -> None:
    path = tmp_path / "agents.toml"
    path.write_text(agents_toml("http://127.0.0.1:9/run", extra=extra))
    with pytest.raises(AgentsConfigError, match=message) as refused:
        load_agents_file(path, environ)
    assert "ag-ui" in str(refused.value)


def test_an_ag_ui_agent_needs_a_url(tmp_path: Path) -> None:
    path = tmp_path / "agents.toml"
    path.write_text("[[agents]]\nid='agui'\nbackend='ag-ui'\n")
    with pytest.raises(AgentsConfigError, match="url"):
        load_agents_file(path, {})


async def test_tool_calls_reach_the_event_stream_the_transcript_and_the_next_run(
    agent: AGUIAgentProcess, target_redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    toml = agents_toml(agent.url("/tool")) + (
        f"\n[[agents]]\nid='echoer'\nbackend='ag-ui'\nurl='{agent.url('/echo')}'\n"
    )
    async with app_client(redis_url, agents=registry(tmp_path, toml)) as api:
        first = await ask(api, "tools-2", "weather")
        stream = cast(
            list[tuple[bytes, dict[bytes, bytes]]],
            await target_redis.xrange(SessionRef.of("default", "tools-2").keys.events),
        )
        kinds = [f[b"type"].decode() for _, f in stream if f[b"run_id"].decode() == first["run_id"]]
        assert [k for k in kinds if k.startswith("tool_call")] == [
            "tool_call_start",
            "tool_call_args",
            "tool_call_end",
            "tool_call_result",
        ]
        turns = (await api.get("/v1/sessions/tools-2/transcript")).json()["turns"]
        assert [t["role"] for t in turns] == ["user", "tool_call", "tool", "assistant"]
        call, result = turns[1], turns[2]
        assert call["name"] == "lookup" and json.loads(call["args"]) == {"q": "weather"}
        assert result["tool_call_id"] == call["tool_call_id"] and "found weather" in result["text"]
        second = (
            await post(api, "tools-2", "and now?", agent_id="echoer", wait=20, expect=200)
        ).json()
        assert second["status"] == "completed"
        as_agui = (await api.get("/v1/sessions/tools-2/transcript?format=ag-ui")).json()
        roles = [m["role"] for m in as_agui["messages"]]
        assert roles == ["user", "assistant", "tool", "assistant", "user", "assistant"]
        assert as_agui["messages"][1]["toolCalls"][0]["function"]["name"] == "lookup"
    request = (await agent.records("tools-2"))[-1]
    sent = request["raw_messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "assistant", "user"]
    assert sent[1]["toolCalls"][0]["function"]["name"] == "lookup"
    assert sent[2]["toolCallId"] == sent[1]["toolCalls"][0]["id"]
