"""What the HTTP backends share: bounded retries with backoff, server-sent events, redaction.

An attempt that failed before it produced anything (a connection error, a 5xx) raises
`Retryable`; `retrying` runs attempts until one produces something or the retries are
used up, with exponential backoff and jitter between them. Once an attempt has produced
an item it is never repeated: part of it was out.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.cookiejar
import logging
import random
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any, TypeVar, cast

import httpx

from app.errors import AgentFailedError

log = logging.getLogger(__name__)

T = TypeVar("T")

ERROR_BODY_LIMIT = 4096
"""Bytes of a refusal's body read to classify it."""
DETAIL_LIMIT = 200
"""Characters of an upstream message kept in an error."""
JITTER = 0.25
"""Up to this fraction of a backoff is added at random."""
RETRYABLE = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
)
"""Transport failures worth another attempt when nothing has been produced yet."""
REDACTED = "[redacted]"


class Retryable(Exception):
    """A failed attempt that produced nothing and may succeed if repeated."""


async def retrying(
    attempt: Callable[[], AsyncGenerator[T, None]],
    *,
    max_retries: int,
    backoff_base: float,
    what: str,
    agent_id: str,
) -> AsyncGenerator[T, None]:
    """The items of the first attempt that does not raise Retryable, after at most
    `max_retries` repeats; then AgentFailedError("<what> unavailable: ...")."""
    failed = 0
    while True:
        try:
            async with contextlib.aclosing(attempt()) as items:
                async for item in items:
                    yield item
            return
        except Retryable as exc:
            if failed >= max_retries:
                raise AgentFailedError(f"{what} unavailable: {exc}") from None
            log.info("agent %s: attempt %d failed (%s), retrying", agent_id, failed + 1, exc)
        await asyncio.sleep(backoff(backoff_base, failed))
        failed += 1


def backoff(base: float, attempt: int) -> float:
    delay: float = base * 2**attempt
    return delay + random.uniform(0, delay * JITTER)


def no_cookies() -> http.cookiejar.CookieJar:
    """A cookie jar that keeps nothing: an upstream cookie set for one subscription's account
    must not be sent with another's requests through the shared client."""
    return http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))


def upstream_client(
    connect_timeout: float,
    read_timeout: float,
    transport: httpx.AsyncBaseTransport | None = None,
    headers: Mapping[str, str] | None = None,
) -> httpx.AsyncClient:
    """An agent's one HTTP client: every subscription's requests share it (the key goes on
    each request), so it keeps no cookies."""
    timeout = httpx.Timeout(
        connect=connect_timeout, read=read_timeout, write=connect_timeout, pool=connect_timeout
    )
    return httpx.AsyncClient(
        timeout=timeout, transport=transport, cookies=no_cookies(), headers=headers
    )


async def sse_data(reply: httpx.Response) -> AsyncGenerator[str, None]:
    """The data of each server-sent event; comments, other fields and empty events are
    skipped."""
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


async def read_capped(reply: httpx.Response) -> bytes:
    """At most ERROR_BODY_LIMIT bytes of a (refusal's) body."""
    body = bytearray()
    chunks = cast(AsyncGenerator[bytes, None], reply.aiter_bytes())
    async with contextlib.aclosing(chunks):
        async for chunk in chunks:
            body += chunk
            if len(body) >= ERROR_BODY_LIMIT:
                break
    return bytes(body[:ERROR_BODY_LIMIT])


def transport_failure(
    exc: httpx.HTTPError, secrets: tuple[str, ...], *, produced: bool, what: str
) -> Exception:
    """The error for a failed request: Retryable while nothing was produced and the failure
    is a transport one, AgentFailedError otherwise."""
    reason = redact(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, secrets)
    if produced:
        return AgentFailedError(f"{what} stream broke off after a partial reply: {reason}")
    if isinstance(exc, RETRYABLE):
        return Retryable(reason)
    return AgentFailedError(f"{what} failed: {reason}")


def error_text(parsed: Any) -> tuple[str, str]:
    """(a short message for people, lower-case text to classify) of an error body."""
    error = parsed.get("error", parsed) if isinstance(parsed, dict) else parsed
    if isinstance(error, dict):
        message = error.get("message") or error.get("detail") or ""
        extra = [error.get("code"), error.get("type")]
    else:
        message, extra = error, []
    message = " ".join(str(message or "").split())
    hints = " ".join(str(part) for part in (message, *extra) if part).lower()
    return short(message), hints


def with_status(status: int | None, message: str) -> str:
    head = "in the stream" if status is None else f"status {status}"
    return f"{head}: {message}" if message else head


def short(text: str) -> str:
    return text if len(text) <= DETAIL_LIMIT else text[: DETAIL_LIMIT - 1] + "…"


def redact(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return text
