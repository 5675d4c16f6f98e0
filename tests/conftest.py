"""The suite's own Redis: one redis-server per test session, a clean database per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from app.locks import LeaseManager
from app.metrics import Metrics
from app.redis import create_redis
from app.redis.server import RedisServer
from app.settings import Settings
from tests.support.leases import LeaseStack
from tests.support.servers import Servers, running_servers
from tests.support.settings import make_settings as make_settings  # also imported from here
from tests.support.targets import RedisTarget, cluster_target, single_target
from tests.support.topologies import LocalRedisCluster


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis"), appendonly=False) as server:
        yield server


@pytest.fixture
def own_redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, for tests that stop or restart it."""
    with RedisServer(tmp_path / "redis", extra_args=("--appendfsync", "always")) as server:
        yield server


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture
def settings(redis_server: RedisServer) -> Settings:
    return make_settings(redis_server.url, lease_ttl_seconds=2.0)


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
async def leases(
    redis: Redis, redis_server: RedisServer, metrics: Metrics
) -> AsyncIterator[LeaseManager]:
    async with LeaseStack(redis_server.url, metrics, ttl=2.0, heartbeat=0.5) as manager:
        yield manager


@pytest.fixture(scope="session")
def servers(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Servers]:
    """Real multi-process servers (API keys and internal secret set), shared by the suite."""
    with running_servers(redis_server.url, tmp_path_factory.mktemp("servers")) as running:
        yield running


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedisCluster]:
    """A real Redis Cluster of 3 primaries, started once per test session."""
    with LocalRedisCluster(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


@pytest.fixture
def clean_cluster(redis_cluster: LocalRedisCluster) -> LocalRedisCluster:
    """The session's cluster, emptied for this test."""
    redis_cluster.flushall()
    return redis_cluster


@pytest.fixture(scope="session", params=["single", "cluster"])
def redis_target(request: pytest.FixtureRequest) -> RedisTarget:
    """Each Redis topology in turn: one server, then a 3-primary cluster (each started once).

    A suite runs against both by taking `redis_target`/`target_redis` where it took
    `redis_server`/`redis`.
    """
    if request.param == "cluster":
        return cluster_target(request.getfixturevalue("redis_cluster"))
    return single_target(request.getfixturevalue("redis_server").url)


@pytest.fixture
async def target_redis(redis_target: RedisTarget) -> AsyncIterator[Redis]:
    """A client of `redis_target`, emptied for this test (a RedisCluster on a cluster)."""
    redis_target.flushall()
    client = create_redis(make_settings(redis_target.url))
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def cluster_fleet_servers(
    redis_cluster: LocalRedisCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Servers]:
    """Real multi-process servers (as `servers`) on the session's cluster, shared."""
    with running_servers(redis_cluster.url, tmp_path_factory.mktemp("cluster-fleet")) as running:
        yield running


@pytest.fixture(params=["single", "cluster"])
def fleet(request: pytest.FixtureRequest) -> Servers:
    """A 4-worker server and a second process on each Redis topology in turn (one server,
    then the cluster), that Redis emptied for this test."""
    if request.param == "cluster":
        request.getfixturevalue("clean_cluster")
        servers: Servers = request.getfixturevalue("cluster_fleet_servers")
        return servers
    single_target(request.getfixturevalue("redis_server").url).flushall()
    servers = request.getfixturevalue("servers")
    return servers


@pytest.fixture
async def fleet_redis(fleet: Servers) -> AsyncIterator[Redis]:
    """A client of the Redis `fleet` runs on (a RedisCluster on the cluster)."""
    client = create_redis(make_settings(fleet.redis_url))
    yield client
    await client.aclose()


@pytest.fixture
def cluster_servers(
    clean_cluster: LocalRedisCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Servers]:
    """Real multi-process servers (as `servers`) on the emptied cluster, for one test."""
    with running_servers(clean_cluster.url, tmp_path_factory.mktemp("cluster-servers")) as running:
        yield running
