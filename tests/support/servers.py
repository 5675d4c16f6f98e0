"""Run leasegate as real server processes for tests that need several workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from app.redis.server import free_port
from tests.support.waiting import wait_until_sync


def base_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEASEGATE_")}
    env.update(overrides)
    return env


def is_ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def server_process(
    args: list[str], env: dict[str, str], log_path: Path, ready_url: str, timeout: float = 30.0
) -> Iterator[subprocess.Popen[bytes]]:
    with log_path.open("wb") as log:
        process = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_sync(
            lambda: is_ready(ready_url) or process.poll() is not None, timeout, "server ready"
        )
        assert process.poll() is None, log_path.read_text()
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def leasegate_command(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("leasegate")), *args]


def uvicorn_command(port: int, workers: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "app.main:create_app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]


API_KEYS = {"key-acme-0001": "acme", "key-globex-0002": "globex"}
INTERNAL_SECRET = "internal-secret-0003"
ACME = {"Authorization": "Bearer key-acme-0001"}
GLOBEX = {"Authorization": "Bearer key-globex-0002"}
INTERNAL = {"X-Internal-Secret": INTERNAL_SECRET}


@dataclass(frozen=True)
class Servers:
    """Two server processes on one Redis: uvicorn with 4 workers, and one with 1 worker."""

    four_workers: str
    other_process: str
    logs: Path
    redis_url: str = ""
    """The Redis they share (LEASEGATE_REDIS_URL)."""


def client(url: str, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    """A client for one of the servers, as tenant acme unless other headers are given."""
    return httpx.AsyncClient(base_url=url, timeout=30, headers=ACME if headers is None else headers)


class _Alternating(httpx.AsyncBaseTransport):
    """Sends each request to the next of several servers in turn."""

    def __init__(self, urls: list[str]) -> None:
        self._urls = [httpx.URL(url) for url in urls]
        self._next = 0
        self._transport = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        target = self._urls[self._next % len(self._urls)]
        self._next += 1
        request.url = request.url.copy_with(host=target.host, port=target.port)
        request.headers["host"] = f"{target.host}:{target.port}"
        return await self._transport.handle_async_request(request)

    async def aclose(self) -> None:
        await self._transport.aclose()


def fleet_client(servers: Servers, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    """A client whose requests go to the 4-worker server and the second process in turn,
    as a load balancer in front of two replicas would send them."""
    return httpx.AsyncClient(
        base_url=servers.four_workers,
        timeout=30,
        headers=ACME if headers is None else headers,
        transport=_Alternating([servers.four_workers, servers.other_process]),
    )


AGENTS_TOML = """
[[subscriptions]]
id = "sub-a"
[[subscriptions]]
id = "sub-b"
[[subscriptions]]
id = "sub-c"

[[agents]]
id = "echo"
backend = "echo"

[[agents]]
id = "helper"
backend = "echo"
subscriptions = ["sub-a", "sub-b"]

[[agents]]
id = "triple"
backend = "echo"
subscriptions = ["sub-a", "sub-b", "sub-c"]

[[agents]]
id = "other"
backend = "echo"
subscriptions = ["sub-a", "sub-b"]
"""


def write_agents_file(folder: Path) -> Path:
    path = folder / "agents.toml"
    path.write_text(AGENTS_TOML)
    return path


def agents_settings(folder: Path) -> dict[str, Any]:
    """Settings of an in-process app with the suite's agents (file in `folder`) and internal
    secret: `app_client(url, headers=INTERNAL, **agents_settings(tmp_path))`."""
    return {"agents_file": write_agents_file(folder), "internal_secret": INTERNAL_SECRET}


@contextmanager
def running_servers(redis_url: str, logs: Path) -> Iterator[Servers]:
    env = base_env(
        LEASEGATE_AGENTS_FILE=str(write_agents_file(logs)),
        LEASEGATE_REDIS_URL=redis_url,
        LEASEGATE_LEASE_TTL_SECONDS="3",
        LEASEGATE_SHUTDOWN_GRACE_SECONDS="1",
        LEASEGATE_LOG_LEVEL="WARNING",
        LEASEGATE_API_KEYS=json.dumps(API_KEYS),
        LEASEGATE_INTERNAL_SECRET=INTERNAL_SECRET,
    )
    port_a, port_b = free_port(), free_port()
    url_a, url_b = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"
    with (
        server_process(uvicorn_command(port_a, 4), env, logs / "a.log", url_a),
        server_process(uvicorn_command(port_b, 1), env, logs / "b.log", url_b),
    ):
        yield Servers(url_a, url_b, logs, redis_url)


@contextmanager
def single_process_servers(
    redis_url: str, logs: Path, count: int, **env: str
) -> Iterator[list[tuple[str, Any]]]:
    """`count` one-process servers (the process is the worker: SIGKILL hits the holder)."""
    environment = base_env(LEASEGATE_REDIS_URL=redis_url, LEASEGATE_LOG_LEVEL="WARNING", **env)
    with ExitStack() as stack:
        started = []
        for i in range(count):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            process = stack.enter_context(
                server_process(uvicorn_command(port, 1), environment, logs / f"server-{i}.log", url)
            )
            started.append((url, process))
        yield started
