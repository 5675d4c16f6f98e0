"""LEASEGATE_REDIS_URL names a single server, a Redis Cluster or a Sentinel set: parsing,
clear errors that never show the URL, the client each one gets, and the redis-py internals
the cluster client relies on (no server needed)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.exceptions import (
    ClusterDownError,
    RedisClusterException,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from app.errors import RedisUnavailableError
from app.redis import create_redis, guarded
from app.redis.cluster import LeasegateCluster
from app.redis.urls import parse_redis_url
from app.settings import Settings

SECRET = "s3cr3t-Pa55"


def test_cluster_urls_name_their_seed_nodes() -> None:
    topology = parse_redis_url(f"redis+cluster://app:{SECRET}@10.0.0.1:7000,10.0.0.2,[::1]:7002/")
    assert topology.kind == "cluster" and not topology.tls
    assert topology.nodes == (("10.0.0.1", 7000), ("10.0.0.2", 6379), ("::1", 7002))
    assert (topology.username, topology.password) == ("app", SECRET)
    assert SECRET not in repr(topology)
    assert parse_redis_url("rediss+cluster://h:7000").tls
    assert parse_redis_url("redis+cluster://h:7000/0").nodes == (("h", 7000),)


def test_sentinel_urls_name_the_sentinels_the_service_and_the_db() -> None:
    topology = parse_redis_url(
        f"redis+sentinel://:{SECRET}@s1:26380,s2/mymaster/2?sentinel_password=other-one"
    )
    assert topology.kind == "sentinel"
    assert topology.nodes == (("s1", 26380), ("s2", 26379))
    assert (topology.service, topology.db) == ("mymaster", 2)
    assert (topology.password, topology.sentinel_password) == (SECRET, "other-one")
    assert parse_redis_url("redis+sentinel://s1/mymaster/").db == 0


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+cluster://", "names no cluster seed node"),
        (f"redis+cluster://:{SECRET}@", "names no cluster seed node"),
        ("redis+cluster://a:7000,,b:7001", "cluster seed node 2 has no host"),
        ("redis+cluster://a:7000,b:70000", "cluster seed node 2 has an invalid port"),
        ("redis+cluster://a:port", "cluster seed node 1 has an invalid port"),
        ("redis+cluster://a:7000/3", "only database 0"),
        ("redis+cluster://a:7000?ssl=1", "no query parameters"),
        ("redis+sentinel://s1:26379", "needs the master's service name"),
        ("redis+sentinel://s1:26379/", "needs the master's service name"),
        ("redis+sentinel:///mymaster", "names no Sentinel"),
        ("redis+sentinel://s1:x/mymaster", "Sentinel 1 has an invalid port"),
        ("redis+sentinel://s1/mymaster/db1", "database of a Sentinel URL is a number"),
        ("redis+sentinel://s1/mymaster/1/2", "path is /service"),
        ("redis+sentinel://s1/my%20master", "service name allows"),
        ("redis+sentinel://s1/m?password=x", "only the query parameter sentinel_password"),
        ("redis+clustr://a:7000", "must start with one of"),
        ("redis://localhost:notaport", "invalid port"),
    ],
)
def test_malformed_urls_are_refused_clearly(url: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(redis_url=url)


@pytest.mark.parametrize(
    "url",
    [
        f"redis://user:{SECRET}/x@host:6379/0",  # an unescaped '/' puts part of it in the port
        f"redis+cluster://user:{SECRET}@host:{SECRET}",
        f"redis+sentinel://user:{SECRET}@h:{SECRET}/m",
        f"redis+sentinel://h/m?sentinel_password={SECRET}&x=1",
    ],
)
def test_errors_never_show_the_url_or_its_password(url: str) -> None:
    with pytest.raises(ValidationError) as info:
        Settings(redis_url=url)
    assert SECRET not in str(info.value) and SECRET not in repr(info.value)


async def test_each_topology_gets_its_client_without_connecting() -> None:
    single = create_redis(Settings(redis_url="redis://127.0.0.1:1/0"))
    cluster = create_redis(Settings(redis_url="redis+cluster://127.0.0.1:1,127.0.0.1:2"))
    sentinel = create_redis(Settings(redis_url="redis+sentinel://127.0.0.1:1/mymaster/3"))
    try:
        assert type(single) is Redis
        assert isinstance(cluster, LeasegateCluster) and isinstance(cluster, RedisCluster)
        assert isinstance(sentinel.connection_pool, SentinelConnectionPool)
        assert sentinel.connection_pool.service_name == "mymaster"
        assert sentinel.connection_pool.connection_kwargs["db"] == 3
    finally:
        for client in (single, cluster, sentinel):
            await client.aclose()


async def _raise(exc: BaseException) -> None:
    raise exc


def _cannot_connect() -> RedisClusterException:
    exc = RedisClusterException("Redis Cluster cannot be connected")
    exc.__cause__ = RedisConnectionError("refused")
    return exc


@pytest.mark.parametrize(
    "exc",
    [
        RedisConnectionError("refused"),
        ClusterDownError("CLUSTERDOWN The cluster is down"),
        TryAgainError("TRYAGAIN"),
        SlotNotCoveredError("slot 7 is not covered"),
        _cannot_connect(),
    ],
)
async def test_an_unreachable_cluster_is_redis_unavailable(exc: BaseException) -> None:
    with pytest.raises(RedisUnavailableError):
        await guarded(_raise(exc))


@pytest.mark.parametrize(
    "exc",
    [RedisClusterException("keys in request don't hash to the same slot"), ResponseError("ERR")],
)
async def test_a_refused_command_is_not_hidden_as_unavailable(exc: BaseException) -> None:
    with pytest.raises(type(exc)):
        await guarded(_raise(exc))


# --- redis-py internals app/redis/cluster.py relies on ------------------------------------
# They are not public API: a redis-py release may rename or reshape them without notice
# (pyproject.toml caps redis below the next major version). Each check names the internal.


def _params(function: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(function).parameters)


def _defaults_only(function: Callable[..., Any]) -> bool:
    """Callable with no argument but self."""
    rest = list(_params(function).values())[1:]
    return all(
        p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in rest
    )


def _takes_anything(function: Callable[..., Any]) -> bool:
    kinds = {p.kind for p in _params(function).values()}
    return {inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD} <= kinds


async def test_the_redis_py_internals_the_cluster_client_relies_on_are_unchanged() -> None:
    fresh = RedisCluster(host="127.0.0.1", port=1, reinitialize_steps=0)  # connects lazily
    try:
        checks = {
            # LeasegateCluster.execute_command loads the slots first while this is set.
            "RedisCluster._initialize (a bool, true until the slots are loaded)": (
                getattr(fresh, "_initialize", None) is True
            ),
            "RedisCluster.initialize() (a coroutine method callable without arguments)": (
                inspect.iscoroutinefunction(RedisCluster.initialize)
                and _defaults_only(RedisCluster.initialize)
            ),
            "RedisCluster.execute_command(*args, **kwargs) (overridden, a coroutine)": (
                inspect.iscoroutinefunction(RedisCluster.execute_command)
                and _takes_anything(RedisCluster.execute_command)
            ),
            "RedisCluster(reinitialize_steps=...) (0: a MOVED reply re-points one slot)": (
                "reinitialize_steps" in _params(RedisCluster.__init__)
                and getattr(fresh, "reinitialize_steps", None) == 0
            ),
            "RedisCluster.encoder (handed to the plain PubSub)": hasattr(fresh, "encoder"),
            "RedisCluster.pubsub (overridden)": callable(getattr(RedisCluster, "pubsub", None)),
            "PubSub(connection_pool, encoder=...)": (
                {"connection_pool", "encoder"} <= _params(PubSub.__init__).keys()
            ),
            # AnyNodeConnection._connect sets host and port, then calls this, at each connect.
            "Connection._connect(self) (overridden, a coroutine taking no argument)": (
                inspect.iscoroutinefunction(getattr(Connection, "_connect", None))
                and list(_params(Connection._connect)) == ["self"]
            ),
            "Connection.host and Connection.port (the address _connect opens)": (
                (Connection(host="h", port=1).host, Connection(host="h", port=1).port) == ("h", 1)
            ),
        }
    finally:
        await fresh.aclose()
    changed = [name for name, unchanged in checks.items() if not unchanged]
    assert not changed, f"redis-py changed internals app/redis/cluster.py relies on: {changed}"
