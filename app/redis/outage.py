"""Telling an unreachable Redis (retry later: 503) from a bug, in one place."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from redis.exceptions import (
    ClusterDownError,
    RedisClusterException,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.errors import RedisUnavailableError

T = TypeVar("T")


def _unreachable(exc: BaseException) -> bool:
    """A Redis error that means "not reachable now", not a bug: retry later (503)."""
    if isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError):
        return True
    # A cluster that lost a primary, or is moving slots under a multi-key script.
    if isinstance(exc, ClusterDownError | TryAgainError):
        return True
    # "Redis Cluster cannot be connected", or no node serves a slot; not the client's
    # refusal of a command (e.g. keys of two slots), which is a bug to surface.
    if isinstance(exc, RedisClusterException):
        return isinstance(exc, SlotNotCoveredError) or isinstance(
            exc.__cause__, RedisConnectionError | RedisTimeoutError | OSError
        )
    return False


async def guarded(awaitable: Awaitable[T], timeout: float | None = None) -> T:
    """Await a Redis call; an unreachable Redis becomes RedisUnavailableError, and so does
    one that has not answered within `timeout` seconds, the client's own re-sends included
    (a request must not outlive the Redis timeout by the client's retries)."""
    try:
        if timeout is None:
            return await awaitable
        async with asyncio.timeout(timeout):
            return await awaitable
    except TimeoutError as exc:
        raise RedisUnavailableError(f"Redis did not answer within {timeout:g} s") from exc
    except Exception as exc:
        if _unreachable(exc):
            raise RedisUnavailableError(
                f"Redis could not be reached ({type(exc).__name__})"
            ) from exc
        raise


def as_text(value: object) -> str:
    """A Redis reply value (bytes, or already text) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)
