"""A Redis Cluster client whose pub/sub connects to any live node."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import (
    Connection,
    ConnectionPool,
    SSLConnection,
)
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from app.redis.urls import RedisTopology


def retry_policy() -> Retry:
    """Fail fast: two quick re-sends, then the caller gets the error."""
    return Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.1), retries=2)


class LeasegateCluster(RedisCluster):
    """redis-py's asyncio RedisCluster, with the pub/sub leasegate needs.

    On a cluster, a plain PUBLISH (the only kind leasegate sends, from its scripts or not)
    is broadcast to every node, so one connection to any node hears every channel. Instead
    of redis-py's ClusterPubSub, which pins a node chosen by the first channel's slot,
    `pubsub()` gives a plain PubSub whose connection goes to whichever node answers, tried
    in random order (the nodes the client knows now, else the URL's seeds) each time it
    (re)connects: a dead node is left for a live one, and workers spread over the nodes.

    It leans on redis-py internals (`RedisCluster._initialize`, `Connection._connect`, the
    `reinitialize_steps` option, `PubSub(..., encoder=)`), which
    tests/test_redis_topology.py checks, and pyproject.toml caps redis below version 9.
    """

    def __init__(
        self, *args: Any, pubsub_kwargs: dict[str, Any], seeds: list[tuple[str, int]], **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._pubsub_kwargs = pubsub_kwargs
        self._seeds = seeds
        self._pubsub_pool: ConnectionPool | None = None

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        # Learn the slots first: redis-py sends a keyed command issued before that (such as
        # the first scripts a fresh worker runs at once) to a random node, and each one
        # then costs a MOVED round trip.
        if self._initialize:
            await self.initialize()
        return await super().execute_command(*args, **kwargs)

    @classmethod
    def for_topology(cls, topology: RedisTopology, timeouts: dict[str, Any]) -> LeasegateCluster:
        credentials = {"username": topology.username, "password": topology.password}
        connection_class = AnyNodeSSLConnection if topology.tls else AnyNodeConnection
        return cls(
            startup_nodes=[ClusterNode(host, port) for host, port in topology.nodes],
            retry=retry_policy(),
            health_check_interval=30,
            ssl=topology.tls,
            # A MOVED reply re-points its one slot. Without this, every 5th MOVED makes
            # redis-py close all connections, in-flight commands of other requests too.
            # (A connection error still refreshes the whole topology.)
            reinitialize_steps=0,
            pubsub_kwargs={
                **credentials,
                **timeouts,
                "retry": retry_policy(),
                "health_check_interval": 30,
                "connection_class": connection_class,
            },
            seeds=list(topology.nodes),
            **credentials,
            **timeouts,
        )

    def pubsub(self, **_: Any) -> PubSub:  # type: ignore[override]
        # Each PubSub holds its one connection and closes it in its aclose(); the pool
        # keeps nothing else open. (RedisCluster.aclose() also serves as the client's
        # internal reset after CLUSTERDOWN, so it must not touch pub/sub connections.)
        if self._pubsub_pool is None:
            self._pubsub_pool = ConnectionPool(nodes=self._pubsub_nodes, **self._pubsub_kwargs)
        return PubSub(self._pubsub_pool, encoder=self.encoder)

    def _pubsub_nodes(self) -> list[tuple[str, int]]:
        known = [(node.host, int(node.port)) for node in self.get_nodes()]
        nodes = known or list(self._seeds)
        random.shuffle(nodes)
        return nodes


class AnyNodeConnection(Connection):
    """A connection to the first node of `nodes()` that accepts it, asked at each connect."""

    def __init__(self, *, nodes: Callable[[], list[tuple[str, int]]], **kwargs: Any) -> None:
        self._nodes = nodes
        super().__init__(**kwargs)

    async def _connect(self) -> None:
        failure: BaseException | None = None
        for host, port in self._nodes():
            self.host, self.port = host, port
            try:
                await super()._connect()  # type: ignore[no-untyped-call]
            except (OSError, TimeoutError) as exc:
                failure = exc
                continue
            return
        raise failure or OSError("no cluster node to connect to")


class AnyNodeSSLConnection(AnyNodeConnection, SSLConnection):
    pass
