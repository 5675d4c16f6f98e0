"""The `openai` backend: streams a chat completion from any OpenAI-compatible endpoint.

One HTTP client (connection pool) per agent, shared by all of its subscriptions: the
subscription's API key is put on each request (its Authorization header) and never on the
client, and the client keeps no cookies, so a switch of subscription needs no new client
and nothing of one subscription's account travels with another's requests. A refused
subscription (`app.subscriptions.classify`: rate_limit, quota or auth, read from the
status, the body and the rate-limit headers) raises SubscriptionFailureError with its kind
and the provider's cooldown; 5xx answers and connection failures are retried with backoff
while nothing has been streamed yet. The key is redacted from every message this module
builds.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from app.agents.base import AgentRequest, Subscription
from app.agents.config import AgentConfig
from app.agents.upstream import (
    Retryable,
    error_text,
    read_capped,
    redact,
    retrying,
    sse_data,
    transport_failure,
    upstream_client,
    with_status,
)
from app.errors import AgentFailedError, SubscriptionFailureError
from app.subscriptions.classify import classify

log = logging.getLogger(__name__)

UPSTREAM = "upstream"
"""How this backend's errors name the far end."""


@dataclass(frozen=True, slots=True)
class _Target:
    subscription_id: str
    url: str
    api_key: str


class OpenAIAgent:
    """An agent backed by an OpenAI-compatible `/chat/completions` endpoint."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        max_retries: int = 2,
        backoff_base: float = 0.2,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not config.model:
            raise ValueError(f"openai agent {config.id!r} needs a model")
        self._config = config
        self._max_retries = max_retries
        self._backoff_base = backoff_base
        self._client = upstream_client(connect_timeout, read_timeout, transport)

    async def stream(self, request: AgentRequest) -> AsyncIterator[str]:
        target = self._target(request.subscription)
        body = {
            "model": self._config.model,
            "stream": True,
            "messages": await self._messages(request),
        }
        deltas = retrying(
            lambda: self._attempt(target, body),
            max_retries=self._max_retries,
            backoff_base=self._backoff_base,
            what=UPSTREAM,
            agent_id=self._config.id,
        )
        async with contextlib.aclosing(deltas):
            async for delta in deltas:
                yield delta

    async def aclose(self) -> None:
        """Close the client now, streams still using it included."""
        await self._client.aclose()

    def _target(self, subscription: Subscription | None) -> _Target:
        if subscription is None or not subscription.base_url or not subscription.api_key:
            raise AgentFailedError(f"agent {self._config.id!r} has no usable subscription")
        url = subscription.base_url.rstrip("/") + "/chat/completions"
        return _Target(subscription.id, url, subscription.api_key)

    async def _messages(self, request: AgentRequest) -> list[dict[str, str]]:
        messages: list[dict[str, str]] = []
        if self._config.system_prompt:
            messages.append({"role": "system", "content": self._config.system_prompt})
        if request.history is not None:
            messages += [{"role": t.role, "content": t.text} for t in await request.history()]
        messages.append({"role": "user", "content": request.text})
        return messages

    async def _attempt(self, target: _Target, body: dict[str, Any]) -> AsyncGenerator[str, None]:
        """One request. Raises Retryable only if it failed before streaming anything."""
        streamed = False
        headers = {"Authorization": f"Bearer {target.api_key}", "Accept": "text/event-stream"}
        try:
            async with self._client.stream("POST", target.url, json=body, headers=headers) as reply:
                if not reply.is_success:
                    raise await _refusal(reply, target)
                async with contextlib.aclosing(_deltas(reply, target)) as deltas:
                    async for delta in deltas:
                        streamed = True
                        yield delta
        except httpx.HTTPError as exc:
            raise transport_failure(
                exc, (target.api_key,), produced=streamed, what=UPSTREAM
            ) from None


async def _deltas(reply: httpx.Response, target: _Target) -> AsyncGenerator[str, None]:
    """The text deltas of a server-sent-events stream of chat-completion chunks."""
    events = 0
    streamed = False
    async with contextlib.aclosing(sse_data(reply)) as payloads:
        async for payload in payloads:
            events += 1
            if payload == "[DONE]":
                return
            if delta := _delta(payload, target, streamed=streamed):
                streamed = True
                yield delta
    if not events:
        raise AgentFailedError("upstream answered without any stream events")


def _delta(payload: str, target: _Target, *, streamed: bool) -> str | None:
    try:
        chunk = json.loads(payload)
    except ValueError:
        raise AgentFailedError("upstream sent a stream event that is not JSON") from None
    if not isinstance(chunk, dict):
        return None
    if "error" in chunk:
        raise _stream_error(chunk, target, streamed=streamed)
    choices = chunk.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    delta = choices[0].get("delta")
    content = delta.get("content") if isinstance(delta, dict) else None
    return content if isinstance(content, str) and content else None


def _stream_error(chunk: dict[str, Any], target: _Target, *, streamed: bool) -> Exception:
    """An error event in a 200 stream: classified like a refusal unless text already went out."""
    message, hints = error_text(chunk)
    message = redact(message, (target.api_key,))
    if streamed:
        return AgentFailedError(f"upstream failed after a partial reply: {message or 'error'}")
    return _classified(None, message, hints, target, {})


async def _refusal(reply: httpx.Response, target: _Target) -> Exception:
    """The error for a non-2xx answer, read from (at most a few KB of) its body."""
    raw = await read_capped(reply)
    try:
        parsed: Any = json.loads(raw)
    except ValueError:
        parsed = raw.decode("utf-8", "replace")
    message, hints = error_text(parsed)
    message = redact(message, (target.api_key,))
    if reply.status_code >= 500:
        return Retryable(with_status(reply.status_code, message))
    return _classified(reply.status_code, message, hints, target, reply.headers)


def _classified(
    status: int | None, message: str, hints: str, target: _Target, headers: Mapping[str, str]
) -> Exception:
    refusal = classify(status, hints, headers)
    if refusal is not None:
        return SubscriptionFailureError(
            refusal.kind, target.subscription_id, message, refusal.cooldown
        )
    return AgentFailedError(f"upstream refused the request ({with_status(status, message)})")
