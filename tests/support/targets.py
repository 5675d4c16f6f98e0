"""Redis topologies for the tests: one server or a 3-primary Redis Cluster, behind one face."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import redis as sync_redis
from redis.crc import key_slot

from tests.support.topologies import LocalRedisCluster


@dataclass(frozen=True)
class RedisTarget:
    """A Redis a test runs against: its URL (as LEASEGATE_REDIS_URL) and how to empty it."""

    name: str
    url: str
    flushall: Callable[[], None]


def single_target(url: str) -> RedisTarget:
    def flushall() -> None:
        with sync_redis.Redis.from_url(url) as client:
            client.flushall()

    return RedisTarget("single", url, flushall)


def cluster_target(cluster: LocalRedisCluster) -> RedisTarget:
    return RedisTarget("cluster", cluster.url, cluster.flushall)


def slot_of(key: str) -> int:
    return int(key_slot(key.encode()))


def node_of_slot(cluster: LocalRedisCluster, slot: int) -> int:
    """The port of the primary that serves `slot`."""
    with sync_redis.Redis(port=cluster.nodes[0].port) as client:
        for start, end, primary, *_ in client.cluster("SLOTS"):
            if start <= slot <= end:
                return int(primary[1])
    raise AssertionError(f"slot {slot} is not served")
