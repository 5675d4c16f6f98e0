"""The service as a user starts it: `leasegate serve`, and uvicorn's app factory."""

from __future__ import annotations

import re
import shlex
import signal
import socket
import subprocess
from pathlib import Path

import httpx
import pytest

from app.redis.server import RedisServer, free_port
from tests.support.servers import base_env, leasegate_command, server_process, uvicorn_command
from tests.support.waiting import wait_until_sync


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.multiprocess
def test_serve_starts_an_embedded_redis_and_stops_it_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = base_env(LEASEGATE_DATA_DIR=str(tmp_path / "data"))
    log = tmp_path / "serve.log"
    command = leasegate_command("serve", "--port", str(port), "--workers", "2")
    with server_process(command, env, log, url) as process:
        output = log.read_text()
        redis_port = int(re.search(r"embedded redis-server on 127\.0\.0\.1:(\d+)", output)[1])  # type: ignore[index]
        curl = re.search(r"try\s+(curl [^\"\n]+)", output)
        assert curl is not None, output
        printed = subprocess.run(shlex.split(curl[1]), capture_output=True, text=True, timeout=10)
        assert printed.returncode == 0 and '"ready"' in printed.stdout
        assert httpx.get(f"{url}/readyz").status_code == 200
        assert (tmp_path / "data" / "redis" / "appendonly.aof").exists()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    assert "embedded redis-server stopped" in log.read_text()
    wait_until_sync(lambda: not port_open(redis_port), 5, "embedded redis stopped")


@pytest.mark.multiprocess
def test_uvicorn_app_factory_uses_the_configured_redis(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    port = free_port()
    env = base_env(LEASEGATE_REDIS_URL=redis_server.url)
    url = f"http://127.0.0.1:{port}"
    with server_process(uvicorn_command(port, workers=2), env, tmp_path / "uv.log", url):
        assert httpx.get(f"{url}/readyz").json() == {"status": "ready"}


@pytest.mark.multiprocess
def test_serve_refuses_bad_configuration(tmp_path: Path) -> None:
    env = base_env(LEASEGATE_LEASE_TTL_SECONDS="3", LEASEGATE_HEARTBEAT_INTERVAL_SECONDS="5")
    result = subprocess.run(
        leasegate_command("serve", "--port", str(free_port())),
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "HEARTBEAT_INTERVAL_SECONDS must be shorter" in result.stderr
