"""The Redis client of one application instance."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.errors import RedisUnavailableError
from app.settings import Settings

T = TypeVar("T")


def create_redis(settings: Settings) -> Redis:
    """A pooled client that fails fast: a few quick retries, then the caller gets the error.

    Long retry loops inside the client would hold a request (and a lease heartbeat)
    past its own deadlines; leasegate's callers decide what to do instead.
    """
    return Redis.from_url(
        settings.redis_url_or_default,
        socket_timeout=settings.redis_timeout_seconds,
        socket_connect_timeout=settings.redis_timeout_seconds,
        retry=Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.1), retries=2),
        health_check_interval=30,
    )


async def guarded(awaitable: Awaitable[T]) -> T:
    """Await a Redis call; an unreachable Redis becomes RedisUnavailableError."""
    try:
        return await awaitable
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        raise RedisUnavailableError(f"Redis could not be reached ({type(exc).__name__})") from exc
