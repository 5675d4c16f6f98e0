"""The Redis client of one application instance."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from app.settings import Settings


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
