"""The Redis client of one application instance, for the topology its URL names.

`LEASEGATE_REDIS_URL` takes one of:

- `redis://`, `rediss://` (TLS) or `unix://`: a single server, as redis-py reads it;
- `redis+cluster://[user:password@]host[:port][,host[:port]...][/0]` (`rediss+cluster://`
  for TLS): a Redis Cluster, found through any of the seed nodes (default port 6379);
- `redis+sentinel://[user:password@]host[:port][,host[:port]...]/service[/db]`
  (`rediss+sentinel://` for TLS): the current master of `service` as the Sentinels name
  it (default Sentinel port 26379). The user and password are the master's; a password
  of the Sentinels themselves, if they have one, is the query parameter
  `sentinel_password`.

Every client fails fast the same way (socket and connect timeouts, a few quick retries).
Everything leasegate does on one key set is one script whose keys share a hash tag, and
its pipelines are non-transactional, so the cluster client runs them unchanged; its
pub/sub is the one difference, see `LeasegateCluster.pubsub`.
"""

from __future__ import annotations

import os
import random
import re
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast
from urllib.parse import parse_qs, unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import (
    BlockingConnectionPool,
    Connection,
    ConnectionPool,
    SSLConnection,
)
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import (
    ClusterDownError,
    RedisClusterException,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.errors import RedisUnavailableError

if TYPE_CHECKING:
    from app.settings import Settings

T = TypeVar("T")

SINGLE_SCHEMES = frozenset({"redis", "rediss", "unix"})
CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}  # scheme: TLS
SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}
ALL_SCHEMES = sorted(SINGLE_SCHEMES | CLUSTER_SCHEMES.keys() | SENTINEL_SCHEMES.keys())
DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379
_SERVICE = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_URL = "LEASEGATE_REDIS_URL"


@dataclass(frozen=True, slots=True)
class RedisTopology:
    """What a Redis URL names. `nodes` are the cluster's seeds or the Sentinels."""

    kind: Literal["single", "cluster", "sentinel"]
    url: str
    nodes: tuple[tuple[str, int], ...] = ()
    service: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    sentinel_password: str | None = None

    def __repr__(self) -> str:  # never show the URL or the passwords
        return f"RedisTopology({self.kind}, nodes={list(self.nodes)}, service={self.service!r})"


def parse_redis_url(url: str) -> RedisTopology:
    """Read a Redis URL; a ValueError names what is wrong, never the URL's text itself
    (which may carry a password)."""
    scheme, sep, _ = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ALL_SCHEMES:
        schemes = ", ".join(f"{s}://" for s in ALL_SCHEMES)
        raise ValueError(f"{_URL} must start with one of {schemes}")
    if scheme in SINGLE_SCHEMES:
        return _single(url, scheme)
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ValueError(f"{_URL} is not a valid URL") from None
    if parts.fragment:
        raise ValueError(f"{_URL} must not have a #fragment")
    username, password, hosts = _credentials(parts.netloc)
    if scheme in CLUSTER_SCHEMES:
        if parts.query:
            raise ValueError(f"{_URL}: a cluster URL takes no query parameters")
        if parts.path not in ("", "/", "/0"):
            raise ValueError(f"{_URL}: a Redis Cluster has only database 0 (path '/' or '/0')")
        seeds = _hosts(hosts, DEFAULT_PORT, "cluster seed node")
        return RedisTopology("cluster", url, seeds, username=username, password=password,
                             tls=CLUSTER_SCHEMES[scheme])  # fmt: skip
    sentinels = _hosts(hosts, DEFAULT_SENTINEL_PORT, "Sentinel")
    service, db = _service_and_db(parts.path)
    return RedisTopology("sentinel", url, sentinels, service, db, username, password,
                         SENTINEL_SCHEMES[scheme], _sentinel_password(parts.query))  # fmt: skip


def _single(url: str, scheme: str) -> RedisTopology:
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ValueError(f"{_URL} is not a valid URL") from None
    if scheme == "unix":
        if not parts.path:
            raise ValueError(f"{_URL}: a unix:// URL needs a socket path")
        return RedisTopology("single", url)
    if not parts.hostname:
        raise ValueError(f"{_URL} has no host")
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        # Not the port's text: a password with an unescaped '/' ends up there.
        raise ValueError(f"{_URL} has an invalid port (1-65535)") from None
    return RedisTopology("single", url)


def _credentials(netloc: str) -> tuple[str | None, str | None, str]:
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        return None, None, netloc
    user, colon, password = userinfo.partition(":")
    return unquote(user) or None, unquote(password) if colon else None, hosts


def _hosts(hosts: str, default_port: int, what: str) -> tuple[tuple[str, int], ...]:
    if not hosts.strip(","):
        raise ValueError(f"{_URL} names no {what}: give host:port[,host:port...]")
    found = []
    for position, entry in enumerate(hosts.split(","), start=1):
        found.append(_host_port(entry, default_port, f"{what} {position}"))
    return tuple(found)


def _host_port(entry: str, default_port: int, where: str) -> tuple[str, int]:
    if entry.startswith("["):  # [IPv6]:port
        host, bracket, rest = entry[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"{_URL}: {where} is not host:port")
        port_text = rest[1:] if rest else ""
    else:
        host, _, port_text = entry.partition(":")
    if not host:
        raise ValueError(f"{_URL}: {where} has no host")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{_URL}: {where} has an invalid port (1-65535)")
    return host, int(port_text)


def _service_and_db(path: str) -> tuple[str, int]:
    segments = path.split("/")[1:]
    if segments and segments[-1] == "":
        segments.pop()  # a trailing slash
    if not segments or not segments[0]:
        raise ValueError(f"{_URL}: a Sentinel URL needs the master's service name: "
                         "redis+sentinel://host:port[,host:port...]/service[/db]")  # fmt: skip
    if len(segments) > 2:
        raise ValueError(f"{_URL}: a Sentinel URL's path is /service[/db]")
    service = unquote(segments[0])
    if not _SERVICE.fullmatch(service):
        raise ValueError(f"{_URL}: the Sentinel service name allows 1-128 characters of "
                         "A-Z a-z 0-9 . _ : -")  # fmt: skip
    if len(segments) == 1:
        return service, 0
    if not segments[1].isdigit():
        raise ValueError(f"{_URL}: the database of a Sentinel URL is a number")
    return service, int(segments[1])


def _sentinel_password(query: str) -> str | None:
    if not query:
        return None
    try:
        params = parse_qs(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise ValueError(f"{_URL}: the query is not name=value pairs") from None
    unknown = set(params) - {"sentinel_password"}
    if unknown:
        raise ValueError(f"{_URL}: a Sentinel URL takes only the query parameter "
                         "sentinel_password")  # fmt: skip
    values = params["sentinel_password"]
    if len(values) != 1:
        raise ValueError(f"{_URL}: sentinel_password is given more than once")
    return values[0] or None


# How long a request may queue for a free pooled connection. Longer than the socket
# timeouts: a full pool means a busy worker, not an unreachable Redis (which fails fast).
POOL_WAIT_SECONDS = 10.0


def _retry() -> Retry:
    return Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.1), retries=2)


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
        retry=_retry(),
        health_check_interval=30,
        max_connections=settings.redis_max_connections,
        timeout=POOL_WAIT_SECONDS,
        **timeouts,
    )
    return Redis.from_pool(pool)


def is_cluster(client: object) -> bool:
    """Whether `client` (typed `Redis` across the code) is a Redis Cluster client."""
    return isinstance(client, RedisCluster)


class LeasegateCluster(RedisCluster):
    """redis-py's asyncio RedisCluster, with the pub/sub leasegate needs.

    On a cluster, a plain PUBLISH (the only kind leasegate sends, from its scripts or not)
    is broadcast to every node, so one connection to any node hears every channel. Instead
    of redis-py's ClusterPubSub, which pins a node chosen by the first channel's slot,
    `pubsub()` gives a plain PubSub whose connection goes to whichever node answers, tried
    in random order (the nodes the client knows now, else the URL's seeds) each time it
    (re)connects: a dead node is left for a live one, and workers spread over the nodes.
    """

    def __init__(self, *args: Any, pubsub_kwargs: dict[str, Any], seeds: list[tuple[str, int]],
                 **kwargs: Any) -> None:  # fmt: skip
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
            retry=_retry(),
            health_check_interval=30,
            ssl=topology.tls,
            # A MOVED reply re-points its one slot. Without this, every 5th MOVED makes
            # redis-py close all connections, in-flight commands of other requests too.
            # (A connection error still refreshes the whole topology.)
            reinitialize_steps=0,
            pubsub_kwargs={**credentials, **timeouts, "retry": _retry(),
                           "health_check_interval": 30, "connection_class": connection_class},
            seeds=list(topology.nodes),
            **credentials,
            **timeouts,
        )  # fmt: skip

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
    sentinel = Sentinel(list(topology.nodes), sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]
    # The pool asks the Sentinels for the master at every (re)connect, so a failover is
    # followed; pub/sub on this client follows it the same way.
    client = sentinel.master_for(
        topology.service,
        redis_class=_SentinelMaster,
        db=topology.db,
        username=topology.username,
        password=topology.password,
        ssl=topology.tls,
        retry=_retry(),
        health_check_interval=30,
        **timeouts,
    )
    assert isinstance(client, _SentinelMaster)
    client.sentinel_manager = sentinel
    return client


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


async def guarded(awaitable: Awaitable[T]) -> T:
    """Await a Redis call; an unreachable Redis becomes RedisUnavailableError."""
    try:
        return await awaitable
    except Exception as exc:
        if _unreachable(exc):
            raise RedisUnavailableError(
                f"Redis could not be reached ({type(exc).__name__})"
            ) from exc
        raise


def as_text(value: object) -> str:
    """A Redis reply value (bytes, or already text) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)
