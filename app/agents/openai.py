"""The `openai` backend: streams a chat completion from any OpenAI-compatible endpoint.

One HTTP client (connection pool) per agent, shared by all of its subscriptions: the
subscription's API key is put on each request (its Authorization header) and never on the
client, and the client keeps no cookies, so a switch of subscription needs no new client
and nothing of one subscription's account travels with another's requests. A refused
subscription (429, 401/402/403, or a 4xx whose message speaks of quota or keys) raises
SubscriptionFailureError; 5xx answers and connection failures are retried with backoff
while nothing has been streamed yet. The key is redacted from every message this module
builds.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.cookiejar
import json
import logging
import random
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any, cast

import httpx

from app.agents.base import AgentRequest, Subscription
from app.agents.config import AgentConfig
from app.errors import AgentFailedError, SubscriptionFailureError

log = logging.getLogger(__name__)

ERROR_BODY_LIMIT = 4096
"""Bytes of a refusal's body read to classify it."""
DETAIL_LIMIT = 200
"""Characters of an upstream message kept in an error."""
JITTER = 0.25
"""Up to this fraction of a backoff is added at random."""
RATE_LIMIT_HINTS = ("insufficient_quota", "quota", "credit balance", "rate limit", "rate_limit")
AUTH_HINTS = (
    "invalid api key",
    "invalid_api_key",
    "incorrect api key",
    "token expired",
    "authentication",
)
RETRYABLE = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
)
"""Transport failures worth another attempt when nothing has been streamed yet."""
REDACTED = "[redacted]"


class _Retryable(Exception):
    """A failed attempt that streamed nothing and may succeed if repeated."""


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
        timeout = httpx.Timeout(
            connect=connect_timeout, read=read_timeout, write=connect_timeout, pool=connect_timeout
        )
        self._max_retries = max_retries
        self._backoff_base = backoff_base
        self._client = httpx.AsyncClient(
            timeout=timeout, transport=transport, cookies=_no_cookies()
        )

    async def stream(self, request: AgentRequest) -> AsyncIterator[str]:
        target = self._target(request.subscription)
        body = {
            "model": self._config.model,
            "stream": True,
            "messages": await self._messages(request),
        }
        attempt = 0
        while True:
            try:
                async with contextlib.aclosing(self._attempt(target, body)) as deltas:
                    async for delta in deltas:
                        yield delta
                return
            except _Retryable as exc:
                if attempt >= self._max_retries:
                    raise AgentFailedError(f"upstream unavailable: {exc}") from None
                log.info(
                    "agent %s: attempt %d failed (%s), retrying", self._config.id, attempt + 1, exc
                )
            await asyncio.sleep(_backoff(self._backoff_base, attempt))
            attempt += 1

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
        """One request. Raises _Retryable only if it failed before streaming anything."""
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
            raise _transport_failure(exc, target, streamed=streamed) from None


def _no_cookies() -> http.cookiejar.CookieJar:
    """A cookie jar that keeps nothing: an upstream cookie set for one subscription's account
    must not be sent with another's requests through the shared client."""
    return http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))


async def _deltas(reply: httpx.Response, target: _Target) -> AsyncGenerator[str, None]:
    """The text deltas of a server-sent-events stream of chat-completion chunks."""
    events = 0
    streamed = False
    async with contextlib.aclosing(_payloads(reply)) as payloads:
        async for payload in payloads:
            events += 1
            if payload == "[DONE]":
                return
            if delta := _delta(payload, target, streamed=streamed):
                streamed = True
                yield delta
    if not events:
        raise AgentFailedError("upstream answered without any stream events")


async def _payloads(reply: httpx.Response) -> AsyncGenerator[str, None]:
    """The data of each event; comments, other fields and empty events are skipped."""
    data: list[str] = []
    async for line in reply.aiter_lines():
        name, _, value = line.partition(":")
        if name == "data":
            data.append(value.removeprefix(" "))
        elif not line and data:
            yield "\n".join(data)
            data = []
    if data:  # a last event without its blank line
        yield "\n".join(data)


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
    message, hints = _error_text(chunk)
    message = _redact(message, target.api_key)
    if streamed:
        return AgentFailedError(f"upstream failed after a partial reply: {message or 'error'}")
    return _classified(None, message, hints, target)


async def _refusal(reply: httpx.Response, target: _Target) -> Exception:
    """The error for a non-2xx answer, read from (at most a few KB of) its body."""
    raw = await _read_capped(reply)
    try:
        parsed: Any = json.loads(raw)
    except ValueError:
        parsed = raw.decode("utf-8", "replace")
    message, hints = _error_text(parsed)
    message = _redact(message, target.api_key)
    if reply.status_code >= 500:
        return _Retryable(_with_status(reply.status_code, message))
    return _classified(reply.status_code, message, hints, target)


def _classified(status: int | None, message: str, hints: str, target: _Target) -> Exception:
    kind = _refusal_kind(status, hints)
    if kind is not None:
        return SubscriptionFailureError(kind, target.subscription_id, message)
    return AgentFailedError(f"upstream refused the request ({_with_status(status, message)})")


def _refusal_kind(status: int | None, hints: str) -> str | None:
    if status == 429:
        return "rate_limit"
    if status in (401, 402, 403):
        return "auth"
    if status is not None and not 400 <= status < 500:
        return None
    if any(hint in hints for hint in RATE_LIMIT_HINTS):
        return "rate_limit"
    if any(hint in hints for hint in AUTH_HINTS):
        return "auth"
    return None


def _error_text(parsed: Any) -> tuple[str, str]:
    """(a short message for people, lower-case text to classify) of an error body."""
    error = parsed.get("error", parsed) if isinstance(parsed, dict) else parsed
    if isinstance(error, dict):
        message = error.get("message") or error.get("detail") or ""
        extra = [error.get("code"), error.get("type")]
    else:
        message, extra = error, []
    message = " ".join(str(message or "").split())
    hints = " ".join(str(part) for part in (message, *extra) if part).lower()
    return _short(message), hints


async def _read_capped(reply: httpx.Response) -> bytes:
    body = bytearray()
    chunks = cast(AsyncGenerator[bytes, None], reply.aiter_bytes())
    async with contextlib.aclosing(chunks):
        async for chunk in chunks:
            body += chunk
            if len(body) >= ERROR_BODY_LIMIT:
                break
    return bytes(body[:ERROR_BODY_LIMIT])


def _transport_failure(exc: httpx.HTTPError, target: _Target, *, streamed: bool) -> Exception:
    reason = _redact(
        f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, target.api_key
    )
    if streamed:
        return AgentFailedError(f"upstream stream broke off after a partial reply: {reason}")
    if isinstance(exc, RETRYABLE):
        return _Retryable(reason)
    return AgentFailedError(f"upstream failed: {reason}")


def _backoff(base: float, attempt: int) -> float:
    delay: float = base * 2**attempt
    return delay + random.uniform(0, delay * JITTER)


def _with_status(status: int | None, message: str) -> str:
    head = "in the stream" if status is None else f"status {status}"
    return f"{head}: {message}" if message else head


def _short(text: str) -> str:
    return text if len(text) <= DETAIL_LIMIT else text[: DETAIL_LIMIT - 1] + "…"


def _redact(text: str, secret: str) -> str:
    return text.replace(secret, REDACTED) if secret else text
