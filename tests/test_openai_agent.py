"""The openai agent against a fake OpenAI-compatible upstream on a real loopback port."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import pytest

from app.agents.base import AgentRequest, Subscription, Turn
from app.agents.config import AgentConfig
from app.agents.openai import OpenAIAgent
from app.errors import AgentFailedError, SubscriptionFailureError
from app.redis.server import free_port
from tests.support.upstream import FakeUpstream, chunk, running_upstream
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(10)

KEY = "sk-test-SECRET-0123456789abcdef"
SUB = "sub-a"
CONFIG = AgentConfig(
    id="helper",
    backend="openai",
    model="test-model",
    subscriptions=(SUB,),
    system_prompt="Be brief.",
)
HISTORY = [Turn("user", "Hi", "run-1"), Turn("assistant", "Hello! How can I help?", "run-1")]

MakeAgent = Callable[..., OpenAIAgent]


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    fake = FakeUpstream()
    async with running_upstream(fake) as base_url:
        fake.base_url = base_url
        yield fake


@pytest.fixture
async def make_agent() -> AsyncIterator[MakeAgent]:
    agents: list[OpenAIAgent] = []

    def make(config: AgentConfig = CONFIG, **options: Any) -> OpenAIAgent:
        options = {"backoff_base": 0.01, "connect_timeout": 1.0, "read_timeout": 2.0} | options
        agents.append(OpenAIAgent(config, **options))
        return agents[-1]

    yield make
    for agent in agents:
        await agent.aclose()


def request_to(base_url: str | None, *, key: str | None = KEY, **fields: Any) -> AgentRequest:
    return AgentRequest(
        "helper", "What is a lease?", subscription=Subscription(SUB, base_url, key), **fields
    )


async def history() -> list[Turn]:
    return HISTORY


async def collect(agent: OpenAIAgent, request: AgentRequest) -> list[str]:
    return [delta async for delta in agent.stream(request)]


async def failure(agent: OpenAIAgent, request: AgentRequest) -> AgentFailedError:
    with pytest.raises(AgentFailedError) as caught:
        await collect(agent, request)
    return caught.value


# --- a streamed reply -------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", "/"])
async def test_streams_the_deltas_of_the_full_conversation(
    upstream: FakeUpstream, make_agent: MakeAgent, suffix: str
) -> None:
    upstream.stream(["Hel", "lo", ", world"])
    request = request_to(upstream.base_url + suffix, history=history)

    assert await collect(make_agent(), request) == ["Hel", "lo", ", world"]

    [received] = upstream.requests
    assert (received.method, received.path) == ("POST", "/v1/chat/completions")
    assert received.headers["authorization"] == f"Bearer {KEY}"
    assert received.headers["content-type"] == "application/json"
    assert received.json == {
        "model": "test-model",
        "stream": True,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": "What is a lease?"},
        ],
    }


async def test_without_system_prompt_or_history_sends_only_the_text(
    upstream: FakeUpstream, make_agent: MakeAgent
) -> None:
    upstream.stream(["ok"])
    agent = make_agent(AgentConfig("plain", "openai", "m", (SUB,)))

    assert await collect(agent, request_to(upstream.base_url)) == ["ok"]
    assert upstream.requests[0].json["messages"] == [
        {"role": "user", "content": "What is a lease?"}
    ]


async def test_reads_any_well_formed_event_stream(
    upstream: FakeUpstream, make_agent: MakeAgent
) -> None:
    events = [
        ": keep-alive comment\n\n",
        "event: message\r\nid: 1\r\nretry: 100\r\n",
        chunk({"role": "assistant"}).replace("\n", "\r\n"),
        chunk({"content": ""}),
        'data:{"choices": [{"delta": {"content": "A"}}]}\n\n',
        chunk({"content": None}),
        'data: {"choices": [{"delta":\ndata: {"content": "B"}}]}\n\n',
        'data: {"choices": [], "usage": {"total_tokens": 3}}\n\n',
        chunk({}, "stop"),
        "data: [DONE]\n\n",
        chunk({"content": "after the end"}),
    ]
    upstream.raw_stream("".join(events))

    assert await collect(make_agent(), request_to(upstream.base_url)) == ["A", "B"]


async def test_a_stream_without_done_ends_with_its_body(
    upstream: FakeUpstream, make_agent: MakeAgent
) -> None:
    upstream.stream(["one", "two"], done=False)

    assert await collect(make_agent(), request_to(upstream.base_url)) == ["one", "two"]


async def test_a_reply_without_any_event_fails(
    upstream: FakeUpstream, make_agent: MakeAgent
) -> None:
    upstream.status(200, {"choices": [{"message": {"content": "not streamed"}}]})

    error = await failure(make_agent(), request_to(upstream.base_url))
    assert "without any stream events" in str(error)


async def test_an_event_that_is_not_json_fails(
    upstream: FakeUpstream, make_agent: MakeAgent
) -> None:
    upstream.raw_stream("data: {not json\n\n")

    error = await failure(make_agent(), request_to(upstream.base_url))
    assert "not JSON" in str(error)


# --- refusals ---------------------------------------------------------------------------


def refusal(message: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "code": code}}


async def test_429_refuses_the_subscription_for_its_rate_limit(
    upstream: FakeUpstream, make_agent: MakeAgent
) -> None:
    upstream.status(429, refusal("Rate limit reached for requests"))

    error = await failure(make_agent(), request_to(upstream.base_url))
    assert isinstance(error, SubscriptionFailureError)
    assert (error.kind, error.subscription_id) == ("rate_limit", SUB)
    assert "Rate limit reached" in str(error)
    assert len(upstream.requests) == 1


@pytest.mark.parametrize(
    ("status", "message", "kind"),
    [
        (401, "no entry", "auth"),
        (402, "no entry", "quota"),
        (403, "Invalid API key provided.", "auth"),
    ],
)
async def test_401_402_and_a_403_for_the_key_refuse_the_subscription(
    upstream: FakeUpstream, make_agent: MakeAgent, status: int, message: str, kind: str
) -> None:
    upstream.status(status, refusal(message))

    error = await failure(make_agent(), request_to(upstream.base_url))
    assert isinstance(error, SubscriptionFailureError)
    assert (error.kind, error.subscription_id) == (kind, SUB)
    assert len(upstream.requests) == 1


async def test_a_429_carries_the_providers_cooldown(
    upstream: FakeUpstream, make_agent: MakeAgent
) -> None:
    upstream.status(
        429, refusal("Rate limit reached"), headers={"x-ratelimit-reset-tokens": "1m30s"}
    )

    error = await failure(make_agent(), request_to(upstream.base_url))
    assert isinstance(error, SubscriptionFailureError)
    assert (error.kind, error.cooldown) == ("rate_limit", 90)


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (400, refusal("You exceeded your current quota, please check your plan."), "quota"),
        (400, refusal("Your credit balance is too low."), "quota"),
        (404, refusal("nope", code="insufficient_quota"), "quota"),
        (400, refusal("Invalid API key provided."), "auth"),
        (400, refusal("Token expired"), "auth"),
        (400, {"error": "Authentication required"}, "auth"),
    ],
)
async def test_other_4xx_are_classified_by_their_message(
    upstream: FakeUpstream, make_agent: MakeAgent, status: int, body: Any, kind: str
) -> None:
    upstream.status(status, body)

    error = await failure(make_agent(), request_to(upstream.base_url))
    assert isinstance(error, SubscriptionFailureError)
    assert error.kind == kind


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (400, refusal("max_tokens is too large"), "status 400: max_tokens is too large"),
        (404, refusal("The model `x` does not exist"), "status 404: The model `x` does not exist"),
        (422, "<html>unprocessable</html>", "status 422: <html>unprocessable</html>"),
        (403, refusal("This model is not available in your region"), "status 403: This model"),
        (400, refusal("x" * 5000), "x" * 100),
    ],
)
async def test_other_4xx_fail_the_run_without_retry(
    upstream: FakeUpstream, make_agent: MakeAgent, status: int, body: Any, expected: str
) -> None:
    upstream.status(status, body)

    error = await failure(make_agent(), request_to(upstream.base_url))
    assert not isinstance(error, SubscriptionFailureError)
    assert expected in str(error)
    assert len(str(error)) < 300
    assert len(upstream.requests) == 1


async def test_an_error_event_before_any_delta_is_classified(
    upstream: FakeUpstream, make_agent: MakeAgent
) -> None:
    upstream.raw_stream('data: {"error": {"message": "Rate limit exceeded"}}\n\n')

    error = await failure(make_agent(), request_to(upstream.base_url))
    assert isinstance(error, SubscriptionFailureError)
    assert error.kind == "rate_limit"


async def test_an_error_event_after_a_delta_fails_the_run(
    upstream: FakeUpstream, make_agent: MakeAgent
) -> None:
    upstream.raw_stream(chunk({"content": "Hel"}) + 'data: {"error": {"message": "quota"}}\n\n')
    deltas: list[str] = []

    with pytest.raises(AgentFailedError) as caught:
        async for delta in make_agent().stream(request_to(upstream.base_url)):
            deltas.append(delta)
    assert deltas == ["Hel"]
    assert not isinstance(caught.value, SubscriptionFailureError)
    assert "partial reply" in str(caught.value)


# --- retries ----------------------------------------------------------------------------


async def test_a_500_is_retried(upstream: FakeUpstream, make_agent: MakeAgent) -> None:
    upstream.status(500, refusal("The server had an error")).stream(["fine"])
    reads = 0

    async def counted_history() -> list[Turn]:
        nonlocal reads
        reads += 1
        return HISTORY

    request = request_to(upstream.base_url, history=counted_history)
    assert await collect(make_agent(), request) == ["fine"]
    assert len(upstream.requests) == 2
    assert upstream.requests[0].json == upstream.requests[1].json
    assert reads == 1


@pytest.mark.parametrize("max_retries", [0, 2])
async def test_persistent_5xx_fail_after_the_last_retry(
    upstream: FakeUpstream, make_agent: MakeAgent, max_retries: int
) -> None:
    upstream.status(503, refusal("overloaded"), times=5)

    error = await failure(make_agent(max_retries=max_retries), request_to(upstream.base_url))
    assert not isinstance(error, SubscriptionFailureError)
    assert str(error) == "upstream unavailable: status 503: overloaded"
    assert len(upstream.requests) == max_retries + 1


async def test_a_connection_cut_before_any_delta_is_retried(
    upstream: FakeUpstream, make_agent: MakeAgent
) -> None:
    upstream.drop_connection().stream(["again"])

    assert await collect(make_agent(), request_to(upstream.base_url)) == ["again"]
    assert len(upstream.requests) == 2


async def test_a_connection_cut_after_a_delta_fails_without_retry(
    upstream: FakeUpstream, make_agent: MakeAgent
) -> None:
    upstream.stream(["Hel"], drop=True).stream(["never"])
    deltas: list[str] = []

    with pytest.raises(AgentFailedError) as caught:
        async for delta in make_agent().stream(request_to(upstream.base_url)):
            deltas.append(delta)
    assert deltas == ["Hel"]
    assert "partial reply" in str(caught.value)
    assert len(upstream.requests) == 1


async def test_an_unreachable_upstream_fails_after_retries(make_agent: MakeAgent) -> None:
    base_url = f"http://127.0.0.1:{free_port()}/v1"

    error = await failure(make_agent(max_retries=1), request_to(base_url))
    assert not isinstance(error, SubscriptionFailureError)
    assert str(error).startswith("upstream unavailable: ConnectError")


# --- the key and the subscription --------------------------------------------------------


@pytest.mark.parametrize(
    "plan",
    [
        lambda up: up.status(401, refusal("Incorrect API key"), echo_authorization=True),
        lambda up: up.status(429, refusal("Slow down"), echo_authorization=True),
        lambda up: up.status(400, refusal("Bad request"), echo_authorization=True),
        lambda up: up.status(500, refusal("Broken"), echo_authorization=True, times=3),
        lambda up: up.raw_stream('data: {"error": {"message": "' + KEY + '"}}\n\n'),
        lambda up: up.stream(["a"], drop=True),
        lambda up: up.drop_connection().drop_connection().drop_connection(),
    ],
    ids=["401", "429", "400", "500", "error-event", "cut-after-delta", "cut-before-delta"],
)
async def test_the_api_key_never_appears_in_errors_or_logs(
    upstream: FakeUpstream,
    make_agent: MakeAgent,
    caplog: pytest.LogCaptureFixture,
    plan: Callable[[FakeUpstream], object],
) -> None:
    plan(upstream)
    caplog.set_level(logging.DEBUG)

    error = await failure(make_agent(), request_to(upstream.base_url))
    assert KEY not in str(error)
    assert KEY not in repr(error)
    assert KEY not in caplog.text
    assert upstream.requests[0].headers["authorization"] == f"Bearer {KEY}"


async def test_the_api_key_is_not_in_the_error_of_an_unreachable_upstream(
    make_agent: MakeAgent, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    base_url = f"http://127.0.0.1:{free_port()}/v1"

    error = await failure(make_agent(max_retries=1), request_to(base_url))
    assert KEY not in str(error)
    assert KEY not in caplog.text


@pytest.mark.parametrize(
    "subscription",
    [None, Subscription(SUB, None, KEY), Subscription(SUB, "http://127.0.0.1:1/v1", None)],
    ids=["none", "no-base-url", "no-key"],
)
async def test_a_request_without_a_usable_subscription_fails(
    make_agent: MakeAgent, subscription: Subscription | None
) -> None:
    request = AgentRequest("helper", "hi", subscription=subscription)

    error = await failure(make_agent(), request)
    assert str(error) == "agent 'helper' has no usable subscription"
    assert not isinstance(error, SubscriptionFailureError)


def test_an_agent_needs_a_model() -> None:
    with pytest.raises(ValueError, match="needs a model"):
        OpenAIAgent(AgentConfig("helper", "openai", None, (SUB,)))


# --- clients ----------------------------------------------------------------------------


def request_on(base_url: str, subscription: str, key: str) -> AgentRequest:
    return AgentRequest("helper", "hi", subscription=Subscription(subscription, base_url, key))


async def test_one_client_serves_every_subscription_each_with_its_own_key(
    upstream: FakeUpstream, make_agent: MakeAgent
) -> None:
    # Streams read to their end (no [DONE] to stop at early) hand their connection back.
    upstream.stream(["on a"], done=False).stream(["on b"], done=False)
    upstream.stream(["on a again"], done=False)
    agent = make_agent()

    assert await collect(agent, request_on(upstream.base_url, "sub-a", "key-of-a")) == ["on a"]
    assert await collect(agent, request_on(upstream.base_url, "sub-b", "key-of-b")) == ["on b"]
    again = await collect(agent, request_on(upstream.base_url, "sub-a", "key-of-a"))
    assert again == ["on a again"]
    authorizations = [r.headers["authorization"] for r in upstream.requests]
    assert authorizations == ["Bearer key-of-a", "Bearer key-of-b", "Bearer key-of-a"]
    assert len({r.client_port for r in upstream.requests}) == 1  # one pooled connection


async def test_a_cookie_set_for_one_subscription_is_never_sent_again(
    upstream: FakeUpstream, make_agent: MakeAgent
) -> None:
    upstream.stream(["a"], set_cookie="account=sub-a; Path=/").stream(["b"])
    agent = make_agent()

    await collect(agent, request_on(upstream.base_url, "sub-a", "key-of-a"))
    await collect(agent, request_on(upstream.base_url, "sub-b", "key-of-b"))
    assert [r.headers.get("cookie") for r in upstream.requests] == [None, None]


async def test_a_stream_on_one_subscription_goes_on_while_another_is_used(
    upstream: FakeUpstream, make_agent: MakeAgent
) -> None:
    release = asyncio.Event()
    upstream.stream(["slow", " reply"], hold=release).stream(["other"])
    agent = make_agent()
    deltas: list[str] = []

    async def consume() -> None:
        async for delta in agent.stream(request_on(upstream.base_url, "sub-a", "key-of-a")):
            deltas.append(delta)

    slow = asyncio.create_task(consume())
    await wait_until(lambda: _true(len(deltas) == 2), 2.0, "the first deltas")
    assert await collect(agent, request_on(upstream.base_url, "sub-b", "key-of-b")) == ["other"]
    release.set()
    async with asyncio.timeout(2):
        await slow
    assert deltas == ["slow", " reply"]
    assert upstream.requests[1].headers["authorization"] == "Bearer key-of-b"


async def test_an_unused_agent_closes() -> None:
    await OpenAIAgent(CONFIG).aclose()


# --- cancellation -----------------------------------------------------------------------


async def test_cancelling_a_slow_stream_propagates_and_closes_the_response(
    upstream: FakeUpstream, make_agent: MakeAgent
) -> None:
    never = asyncio.Event()
    upstream.stream(["Hel"], hold=never)
    agent = make_agent()
    deltas: list[str] = []

    async def consume() -> None:
        async for delta in agent.stream(request_to(upstream.base_url)):
            deltas.append(delta)

    task = asyncio.create_task(consume())
    await wait_until(lambda: _true(deltas == ["Hel"]), 2.0, "the first delta")
    task.cancel()
    async with asyncio.timeout(1):
        with pytest.raises(asyncio.CancelledError):
            await task
    assert task.cancelled()
    await wait_until(lambda: _true(upstream.disconnects == 1), 2.0, "the upstream to see a close")


async def test_closing_the_stream_early_closes_the_response(
    upstream: FakeUpstream, make_agent: MakeAgent
) -> None:
    upstream.stream(["Hel", "lo"], hold=asyncio.Event())
    stream = make_agent().stream(request_to(upstream.base_url))
    assert isinstance(stream, AsyncGenerator)

    assert await anext(stream) == "Hel"
    await stream.aclose()
    await wait_until(lambda: _true(upstream.disconnects == 1), 2.0, "the upstream to see a close")


async def test_cancelling_during_a_backoff_propagates(
    upstream: FakeUpstream, make_agent: MakeAgent
) -> None:
    upstream.status(500, times=2)
    agent = make_agent(backoff_base=30.0)

    task = asyncio.create_task(collect(agent, request_to(upstream.base_url)))
    await wait_until(lambda: _true(len(upstream.requests) == 1), 2.0, "the first request")
    task.cancel()
    async with asyncio.timeout(1):
        with pytest.raises(asyncio.CancelledError):
            await task
    assert task.cancelled()
    assert len(upstream.requests) == 1


async def _true(value: bool) -> bool:
    return value
