"""AG-UI: `POST /v1/agents/{agent_id}/ag-ui` admits a RunAgentInput and streams the run's
AG-UI events from the session's event stream, on whichever worker serves the request."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from ag_ui.core import (
    BaseEvent,
    Event,
    EventType,
    RunErrorEvent,
    RunFinishedEvent,
    RunStartedEvent,
    TextMessageContentEvent,
    TextMessageEndEvent,
    TextMessageStartEvent,
)
from pydantic import TypeAdapter
from redis.asyncio import Redis

from app.agui.translate import RunTranslator
from app.routers import agui
from app.sessions.models import Run, RunStatus
from app.sessions.ref import SessionRef
from tests.support.api import AppClient, all_runs, app_client, run_of, session_state, wait_status
from tests.support.servers import Servers, client
from tests.support.targets import RedisTarget
from tests.support.waiting import wait_until, written_keys

EVENTS: TypeAdapter[BaseEvent] = TypeAdapter(Event)
ECHO = "/v1/agents/echo/ag-ui"
MODELS = {
    EventType.RUN_STARTED: RunStartedEvent,
    EventType.TEXT_MESSAGE_START: TextMessageStartEvent,
    EventType.TEXT_MESSAGE_CONTENT: TextMessageContentEvent,
    EventType.TEXT_MESSAGE_END: TextMessageEndEvent,
    EventType.RUN_FINISHED: RunFinishedEvent,
    EventType.RUN_ERROR: RunErrorEvent,
}


def run_input(thread: str, text: str, **leasegate: Any) -> dict[str, Any]:
    """A RunAgentInput as a frontend sends it (camelCase), with earlier turns before `text`."""
    messages: list[dict[str, Any]] = [
        {"id": "m1", "role": "user", "content": "an earlier message"},
        {"id": "m2", "role": "assistant", "content": "an earlier reply"},
        {"id": "m3", "role": "user", "content": text},
    ]
    return {
        "threadId": thread,
        "runId": f"frontend-{uuid.uuid4().hex[:8]}",
        "messages": messages,
        "tools": [],
        "context": [],
        "state": {},
        "forwardedProps": {"leasegate": leasegate} if leasegate else {},
    }


NO_USER_MESSAGE = {
    "threadId": "agui-bad",
    "runId": "frontend-1",
    "messages": [
        {"id": "s1", "role": "system", "content": "be brief"},
        {"id": "a1", "role": "assistant", "content": "hello"},
    ],
}


def parse(body: str) -> list[BaseEvent]:
    """Each `data:` of an AG-UI stream as its ag-ui-protocol model, checked to round-trip."""
    events: list[BaseEvent] = []
    for line in body.splitlines():
        if line.startswith("data:"):
            raw = json.loads(line[5:])
            event = EVENTS.validate_python(raw)
            assert isinstance(event, MODELS[event.type])
            assert event.model_dump(mode="json", by_alias=True) == raw
            events.append(event)
    return events


def kinds(events: list[BaseEvent]) -> list[str]:
    return [e.type.value for e in events]


def reply(events: list[BaseEvent]) -> str:
    return "".join(e.delta for e in events if isinstance(e, TextMessageContentEvent))


def started_run(events: list[BaseEvent]) -> str:
    first = events[0]
    assert isinstance(first, RunStartedEvent)
    return first.run_id


def thread_id() -> str:
    return f"agui-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def api(target_redis: Redis, redis_target: RedisTarget) -> AsyncIterator[AppClient]:
    """An app on each Redis topology in turn: one server, then the cluster."""
    async with app_client(redis_target.url) as client:
        yield client


async def test_a_run_streams_as_agui_events(api: AppClient) -> None:
    thread = thread_id()
    body = run_input(thread, "hi", metadata={"delay_ms": 150})
    response = await api.post(ECHO, json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events = parse(response.text)
    run_id = started_run(events)
    assert run_id != body["runId"]  # leasegate's run id, the one /v1/runs knows
    entries = await api.resources.reads.events_after(SessionRef.of("default", thread), None, 1000)
    deltas = [f for _, f in entries if f["type"] == "delta" and f["run_id"] == run_id]
    assert kinds(events) == [
        "RUN_STARTED",
        "TEXT_MESSAGE_START",
        *["TEXT_MESSAGE_CONTENT"] * len(deltas),  # one per delta event of the session
        "TEXT_MESSAGE_END",
        "RUN_FINISHED",
    ]
    assert reply(events) == "echo: hi"  # the last user message; earlier ones are not sent
    assert {getattr(e, "thread_id", thread) for e in events} == {thread}
    assert {getattr(e, "run_id", run_id) for e in events} == {run_id}
    assert len({getattr(e, "message_id", None) for e in events} - {None}) == 1
    run = await run_of(api, run_id)
    assert run["status"] == "completed" and run["input"] == "hi"
    assert run["metadata"] == {"delay_ms": 150}  # forwardedProps.leasegate.metadata


async def test_the_same_idempotency_key_streams_the_first_run(api: AppClient) -> None:
    thread = thread_id()
    body = run_input(thread, "once", metadata={"delay_ms": 200})
    key = {"Idempotency-Key": "k-1"}
    both = await asyncio.gather(*(api.post(ECHO, json=body, headers=key) for _ in range(2)))
    streams = [parse(r.text) for r in both]  # the duplicate's stream replays the retained events
    assert [reply(s) for s in streams] == ["echo: once"] * 2
    assert started_run(streams[0]) == started_run(streams[1])
    ended = parse(
        (await api.post(ECHO, json=run_input(thread, "again", idempotency_key="k-1"))).text
    )
    assert kinds(ended) == [
        "RUN_STARTED",
        "TEXT_MESSAGE_START",
        "TEXT_MESSAGE_CONTENT",
        "TEXT_MESSAGE_END",
        "RUN_FINISHED",
    ]  # the run had ended: its events come from its record
    assert started_run(ended) == started_run(streams[0]) and reply(ended) == "echo: once"
    assert len(await all_runs(api, thread)) == 1


async def test_reject_on_a_busy_thread_answers_409_before_any_stream(api: AppClient) -> None:
    thread = thread_id()
    body = run_input(thread, "busy", busy_policy="reject", metadata={"delay_ms": 300})
    responses = await asyncio.gather(*(api.post(ECHO, json=body) for _ in range(5)))
    assert sorted(r.status_code for r in responses) == [200, 409, 409, 409, 409]
    for refused in (r for r in responses if r.status_code == 409):
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["type"] == "/problems/session-busy"
        assert "data:" not in refused.text
    [streamed] = [r for r in responses if r.status_code == 200]
    assert kinds(parse(streamed.text))[-1] == "RUN_FINISHED"
    assert len(await all_runs(api, thread)) == 1


async def test_enqueued_streams_all_complete_in_admission_order(api: AppClient) -> None:
    thread = thread_id()
    texts = [f"m{i}" for i in range(5)]
    responses = await asyncio.gather(
        *(api.post(ECHO, json=run_input(thread, t, metadata={"delay_ms": 30})) for t in texts),
        api.post(  # the same through the query instead of forwardedProps
            f"{ECHO}?busy_policy=enqueue", json=run_input(thread, "m5")
        ),
    )
    streams = [parse(r.text) for r in responses]
    assert all(r.status_code == 200 for r in responses)
    assert [kinds(s)[-1] for s in streams] == ["RUN_FINISHED"] * 6
    assert [reply(s) for s in streams] == [f"echo: m{i}" for i in range(6)]
    runs = sorted(await all_runs(api, thread), key=lambda r: r["created_at"])
    assert [r["run_id"] for r in sorted(runs, key=lambda r: r["started_at"])] == [
        r["run_id"] for r in runs
    ]
    assert {r["run_id"] for r in runs} == {started_run(s) for s in streams}


async def test_a_queued_stream_is_kept_alive_until_its_run_starts(
    api: AppClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agui, "PING", 0.02)
    thread = thread_id()
    slow = asyncio.create_task(
        api.post(ECHO, json=run_input(thread, "slow", metadata={"delay_ms": 400}))
    )

    async def running() -> bool:
        return (await session_state(api, thread)).get("state") == "busy"

    await wait_until(running, 5, "the first run to hold the thread")
    queued = await api.post(ECHO, json=run_input(thread, "next"))
    before_start = queued.text.split("data:", 1)[0]
    assert before_start.count(": ping") >= 2  # SSE comments while it waited
    assert reply(parse(queued.text)) == "echo: next"
    assert reply(parse((await slow).text)) == "echo: slow"


async def test_a_full_queue_answers_429(target_redis: Redis, redis_target: RedisTarget) -> None:
    async with app_client(redis_target.url, queue_cap=1) as api:
        thread = thread_id()
        slow = asyncio.create_task(
            api.post(ECHO, json=run_input(thread, "a", metadata={"delay_ms": 300}))
        )

        async def queued(count: int) -> bool:
            state = await session_state(api, thread)
            return state.get("state") == "busy" and len(state["queued"]) == count

        await wait_until(lambda: queued(0), 5, "the first run to start")
        waiting = asyncio.create_task(api.post(ECHO, json=run_input(thread, "b")))
        await wait_until(lambda: queued(1), 5, "the second run to be queued")
        full = await api.post(ECHO, json=run_input(thread, "c"))
        assert full.status_code == 429 and full.json()["type"] == "/problems/queue-full"
        assert [reply(parse((await t).text)) for t in (slow, waiting)] == ["echo: a", "echo: b"]


@pytest.mark.parametrize(
    ("path", "body", "slug"),
    [
        (ECHO, NO_USER_MESSAGE, "invalid-agent-input"),
        (ECHO, run_input("not a valid id!", "x"), "invalid-id"),
        (ECHO, run_input("a" * 129, "x"), "invalid-id"),
        ("/v1/agents/nobody/ag-ui", run_input("agui-bad", "x"), "unknown-agent"),
        (ECHO, {"threadId": "agui-bad", "messages": []}, "validation"),  # no runId
        (ECHO, run_input("agui-bad", "x", busy_policy="sometimes"), "invalid-agent-input"),
        (ECHO, run_input("agui-bad", "x", agent="other"), "invalid-agent-input"),
        (ECHO, run_input("agui-bad", "   "), "invalid-agent-input"),
        (f"{ECHO}?busy_policy=reject", run_input("agui-bad", "x", busy_policy="enqueue"), None),
    ],
)
async def test_bad_input_is_a_422_problem_and_admits_nothing(
    api: AppClient, target_redis: Redis, path: str, body: dict[str, Any], slug: str | None
) -> None:
    response = await api.post(path, json=body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"] == f"/problems/{slug or 'invalid-agent-input'}"
    assert await written_keys(target_redis) == []


async def test_idempotency_keys_that_differ_are_a_conflict(
    api: AppClient, target_redis: Redis
) -> None:
    body = run_input("agui-keys", "x", idempotency_key="k-1")
    response = await api.post(ECHO, json=body, headers={"Idempotency-Key": "k-2"})
    assert response.status_code == 409
    assert response.json()["type"] == "/problems/idempotency-conflict"
    assert await written_keys(target_redis) == []


# --- the translation on its own ---------------------------------------------------------


def translated(entries: list[tuple[str, str, str]], run_id: str = "r1") -> list[BaseEvent]:
    translator = RunTranslator("t", run_id)
    events: list[BaseEvent] = []
    for n, (kind, entry_run, text) in enumerate(entries, 1):
        events += translator.translate(
            f"{1000 + n}-0", {"type": kind, "run_id": entry_run, "text": text}
        )
    return events


def test_only_the_runs_own_events_are_translated_and_failures_are_run_errors() -> None:
    events = translated(
        [
            ("queued", "r1", ""),
            ("started", "r0", ""),
            ("delta", "r0", "other run"),
            ("started", "r1", ""),
            ("delta", "r1", "part"),
            ("delta", "r1", ""),
            ("failed", "r1", "upstream exploded"),
            ("delta", "r1", "after the end"),
        ]
    )
    assert kinds(events) == [
        "RUN_STARTED",
        "TEXT_MESSAGE_START",
        "TEXT_MESSAGE_CONTENT",
        "TEXT_MESSAGE_END",
        "RUN_ERROR",
    ]
    error = events[-1]
    assert isinstance(error, RunErrorEvent)
    assert (error.message, error.code) == ("upstream exploded", "failed")
    assert events[0].timestamp == 1004 and reply(events) == "part"


def test_a_run_cancelled_in_the_queue_is_a_run_error_alone() -> None:
    events = translated([("queued", "r1", ""), ("cancelled", "r1", "")])
    assert kinds(events) == ["RUN_ERROR"]
    assert isinstance(events[0], RunErrorEvent) and events[0].code == "cancelled"


def test_a_run_started_again_after_partial_text_gets_a_new_message() -> None:
    events = translated(
        [
            ("started", "r1", ""),
            ("delta", "r1", "par"),
            ("started", "r1", ""),
            ("delta", "r1", "whole"),
            ("completed", "r1", ""),
        ]
    )
    starts = [e for e in events if isinstance(e, TextMessageStartEvent)]
    assert [s.message_id for s in starts] == ["r1", "r1.2"]
    assert kinds(events).count("TEXT_MESSAGE_END") == 2 and kinds(events)[-1] == "RUN_FINISHED"


def test_the_runs_record_finishes_a_stream_whose_events_are_gone() -> None:
    translator = RunTranslator("t", "r1")
    translator.translate("5-0", {"type": "started", "run_id": "r1", "text": ""})
    translator.translate("6-0", {"type": "delta", "run_id": "r1", "text": "echo: "})
    run = Run(
        run_id="r1",
        tenant="default",
        session_id="t",
        status=RunStatus.COMPLETED,
        input="hi",
        agent_id="echo",
        metadata={},
        generation=1,
        output="echo: hi",
        started_at=5_000,
        finished_at=9_000,
    )
    events = translator.catch_up(run)
    assert kinds(events) == ["TEXT_MESSAGE_CONTENT", "TEXT_MESSAGE_END", "RUN_FINISHED"]
    assert reply(events) == "hi" and translator.done and translator.catch_up(run) == []
    gone = RunTranslator("t", "r2")
    assert kinds(gone.expired()) == ["RUN_ERROR"]


# --- across processes --------------------------------------------------------------------


@asynccontextmanager
async def agui_stream(
    url: str, body: dict[str, Any], query: str = ""
) -> AsyncIterator[AsyncIterator[BaseEvent]]:
    async with (
        client(url) as http,
        http.stream("POST", f"{ECHO}{query}", json=body, timeout=30) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")

        async def events() -> AsyncIterator[BaseEvent]:
            async for line in response.aiter_lines():
                for event in parse(line):
                    yield event

        yield events()


async def until(events: AsyncIterator[BaseEvent], *wanted: str) -> list[BaseEvent]:
    seen = []
    async with asyncio.timeout(20):
        async for event in events:
            seen.append(event)
            if event.type.value in wanted:
                return seen
    raise AssertionError(f"stream ended before {wanted}")


@pytest.mark.multiprocess
@pytest.mark.parametrize("first", ["four_workers", "other_process"])
async def test_a_stream_is_served_by_a_process_that_does_not_run_the_run(
    servers: Servers, first: str
) -> None:
    """The second run is queued behind the first, so the first run's holder (a worker of
    the other server) runs it, while this process streams it."""
    holder_url = getattr(servers, first)
    streamer_url = servers.other_process if first == "four_workers" else servers.four_workers
    thread = thread_id()
    slow = run_input(thread, "first", metadata={"delay_ms": 600})
    async with agui_stream(holder_url, slow) as first_events:
        head = await until(first_events, "RUN_STARTED")
        async with agui_stream(streamer_url, run_input(thread, "second")) as second_events:
            second = await until(second_events, "RUN_FINISHED", "RUN_ERROR")
        rest = await until(first_events, "RUN_FINISHED", "RUN_ERROR")
    assert kinds(second)[-1] == "RUN_FINISHED" and reply(second) == "echo: second"
    assert kinds(rest)[-1] == "RUN_FINISHED" and reply(rest) == "echo: first"
    first_run = await run_of(holder_url, started_run(head))
    second_run = await run_of(streamer_url, started_run(second))
    assert second_run["worker"] == first_run["worker"]  # the first holder drained the queue
    assert second_run["started_at"] >= first_run["finished_at"]


@pytest.mark.multiprocess
async def test_a_client_that_disconnects_cancels_only_when_asked(servers: Servers) -> None:
    thread = thread_id()
    slow = run_input(thread, "stop me", metadata={"delay_ms": 30_000})
    async with agui_stream(servers.four_workers, slow, "?on_disconnect=cancel") as events:
        cancelled = started_run(await until(events, "RUN_STARTED"))
    run = await wait_status(servers.other_process, cancelled, "cancelled")
    assert run["reason"] == "client_disconnected"

    kept = run_input(thread, "keep going", metadata={"delay_ms": 600})
    async with agui_stream(servers.four_workers, kept) as events:
        continued = started_run(await until(events, "RUN_STARTED"))
    run = await wait_status(servers.other_process, continued, "completed")
    assert run["output"] == "echo: keep going"


def test_structured_events_become_the_ag_ui_events_they_came_from() -> None:
    translator = RunTranslator("thread", "run-1")

    def entry(kind: str, text: str = "") -> dict[str, str]:
        return {"type": kind, "run_id": "run-1", "text": text}

    events = [
        *translator.translate("1-0", entry("started")),
        *translator.translate("2-0", entry("delta", "let me look")),
        *translator.translate(
            "3-0", entry("tool_call_start", '{"toolCallId":"c1","toolCallName":"lookup"}')
        ),
        *translator.translate("4-0", entry("tool_call_args", '{"toolCallId":"c1","delta":"{}"}')),
        *translator.translate("5-0", entry("tool_call_end", '{"toolCallId":"c1"}')),
        *translator.translate(
            "6-0",
            entry("tool_call_result", '{"toolCallId":"c1","messageId":"m","content":"found"}'),
        ),
        *translator.translate("7-0", entry("delta", "found it")),
        *translator.translate("8-0", entry("completed")),
    ]
    kinds = [e.type.value for e in events]
    assert kinds == [
        "RUN_STARTED",
        "TEXT_MESSAGE_START",
        "TEXT_MESSAGE_CONTENT",
        "TEXT_MESSAGE_END",
        "TOOL_CALL_START",
        "TOOL_CALL_ARGS",
        "TOOL_CALL_END",
        "TOOL_CALL_RESULT",
        "TEXT_MESSAGE_START",
        "TEXT_MESSAGE_CONTENT",
        "TEXT_MESSAGE_END",
        "RUN_FINISHED",
    ]
    starts = [e.message_id for e in events if isinstance(e, TextMessageStartEvent)]
    assert len(set(starts)) == 2  # two messages, two ids
