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

import re
from dataclasses import dataclass
from typing import Literal, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

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
        return RedisTopology(
            "cluster", url, seeds, username=username, password=password, tls=CLUSTER_SCHEMES[scheme]
        )
    sentinels = _hosts(hosts, DEFAULT_SENTINEL_PORT, "Sentinel")
    service, db = _service_and_db(parts.path)
    return RedisTopology(
        "sentinel",
        url,
        sentinels,
        service,
        db,
        username,
        password,
        SENTINEL_SCHEMES[scheme],
        _sentinel_password(parts.query),
    )


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
        raise ValueError(
            f"{_URL}: a Sentinel URL needs the master's service name: "
            "redis+sentinel://host:port[,host:port...]/service[/db]"
        )
    if len(segments) > 2:
        raise ValueError(f"{_URL}: a Sentinel URL's path is /service[/db]")
    service = unquote(segments[0])
    if not _SERVICE.fullmatch(service):
        raise ValueError(
            f"{_URL}: the Sentinel service name allows 1-128 characters of A-Z a-z 0-9 . _ : -"
        )
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
        raise ValueError(f"{_URL}: a Sentinel URL takes only the query parameter sentinel_password")
    values = params["sentinel_password"]
    if len(values) != 1:
        raise ValueError(f"{_URL}: sentinel_password is given more than once")
    return values[0] or None
