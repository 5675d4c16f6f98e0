"""The Redis client of one application instance, for the topology its URL names (see urls)."""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, Any, cast

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import (
    BlockingConnectionPool,
)
from redis.asyncio.sentinel import Sentinel

from app.redis.cluster import LeasegateCluster, retry_policy
from app.redis.urls import RedisTopology, parse_redis_url

if TYPE_CHECKING:
    from app.settings import Settings

# How long a request may queue for a free pooled connection. Longer than the socket
# timeouts: a full pool means a busy worker, not an unreachable Redis (which fails fast).
POOL_WAIT_SECONDS = 10.0


def create_redis(settings: Settings) -> Redis:
    """A pooled client that fails fast: a few quick retries, then the caller gets the error.

    Long retry loops inside the client would hold a request (and a lease heartbeat)
    past its own deadlines; leasegate's callers decide what to do instead.

    For a cluster URL this is a `LeasegateCluster` (a `redis.asyncio.RedisCluster`). It
    is typed as `Redis`: everything leasegate calls on its client (scripts through
    EVALSHA, `script_exists`/`script_load` on every primary, non-transactional
    pipelines, single-key reads, `ping`, `pubsub()`, `aclose`) has the same meaning on
    both, which tests/test_cluster.py checks against a real cluster.
    """
    topology = parse_redis_url(settings.redis_url_or_default)
    timeouts: dict[str, Any] = {
        "socket_timeout": settings.redis_timeout_seconds,
        "socket_connect_timeout": settings.redis_timeout_seconds,
        # CLIENT LIST shows which worker holds which connection.
        "client_name": f"leasegate:{socket.gethostname()}:{os.getpid()}",
    }
    if topology.kind == "cluster":
        return cast(Redis, LeasegateCluster.for_topology(topology, timeouts))
    if topology.kind == "sentinel":
        return _sentinel_master(topology, timeouts)
    # A blocking pool: under a burst (a thousand waiters woken at once) requests queue for
    # one of a bounded number of connections instead of opening one each.
    pool = BlockingConnectionPool.from_url(
        topology.url,
        retry=retry_policy(),
        health_check_interval=30,
        max_connections=settings.redis_max_connections,
        timeout=POOL_WAIT_SECONDS,
        **timeouts,
    )
    return Redis.from_pool(pool)


def is_cluster(client: object) -> bool:
    """Whether `client` (typed `Redis` across the code) is a Redis Cluster client."""
    return isinstance(client, RedisCluster)


class _SentinelMaster(Redis):
    """The master's client; closing it also closes its Sentinel connections."""

    sentinel_manager: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        try:
            await super().aclose(close_connection_pool)
        finally:
            if self.sentinel_manager is not None:
                for client in self.sentinel_manager.sentinels:
                    await client.aclose()


def _sentinel_master(topology: RedisTopology, timeouts: dict[str, Any]) -> Redis:
    sentinel_kwargs: dict[str, Any] = {**timeouts, "password": topology.sentinel_password}
    if topology.tls:
        sentinel_kwargs["ssl"] = True
    sentinel = Sentinel(list(topology.nodes), sentinel_kwargs=sentinel_kwargs)
    # The pool asks the Sentinels for the master at every (re)connect, so a failover is
    # followed; pub/sub on this client follows it the same way.
    client = sentinel.master_for(
        topology.service,
        redis_class=_SentinelMaster,
        db=topology.db,
        username=topology.username,
        password=topology.password,
        ssl=topology.tls,
        retry=retry_policy(),
        health_check_interval=30,
        **timeouts,
    )
    assert isinstance(client, _SentinelMaster)
    client.sentinel_manager = sentinel
    return client
