"""The suite's own Redis: one redis-server per test session, a clean database per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis

from app.locks import LeaseManager, LeaseScripts
from app.metrics import Metrics
from app.redis.pubsub import PubSubHub
from app.redis.server import RedisServer
from app.settings import Settings
from tests.servers import Servers, running_servers
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


def make_settings(url: str, **overrides: object) -> Settings:
    return Settings(redis_url=url, **overrides)  # type: ignore[arg-type]


@pytest.fixture
def settings(redis_server: RedisServer) -> Settings:
    return make_settings(redis_server.url, lease_ttl_seconds=2.0)


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


class LeaseStack:
    """A LeaseManager with its own client and wakeups, as one worker process would have."""

    def __init__(self, url: str, metrics: Metrics, ttl: float, heartbeat: float) -> None:
        from app.redis import create_redis

        self.redis = create_redis(make_settings(url))
        self.wakeups = PubSubHub(self.redis)
        self.manager = LeaseManager(
            self.redis,
            LeaseScripts.register(self.redis),
            self.wakeups,
            ttl=ttl,
            heartbeat_interval=heartbeat,
            metrics=metrics,
        )

    async def __aenter__(self) -> LeaseManager:
        self.wakeups.start()
        return self.manager

    async def __aexit__(self, *_: object) -> None:
        await self.wakeups.close()
        await self.redis.aclose()


@pytest.fixture
async def leases(
    redis: Redis, redis_server: RedisServer, metrics: Metrics
) -> AsyncIterator[LeaseManager]:
    async with LeaseStack(redis_server.url, metrics, ttl=2.0, heartbeat=0.5) as manager:
        yield manager


@asynccontextmanager
async def client_for(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process HTTP client for `app`, with its lifespan run around it."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://leasegate") as client:
            yield client


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
    from app.redis import create_redis

    redis_target.flushall()
    client = create_redis(make_settings(redis_target.url))
    yield client
    await client.aclose()


@pytest.fixture
def cluster_servers(
    clean_cluster: LocalRedisCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Servers]:
    """Real multi-process servers (as `servers`) on the emptied cluster, for one test."""
    with running_servers(clean_cluster.url, tmp_path_factory.mktemp("cluster-servers")) as running:
        yield running
