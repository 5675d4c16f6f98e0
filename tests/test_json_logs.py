"""With LEASEGATE_LOG_FORMAT=json every line the service writes, on stdout and on stderr, is
one JSON object: leasegate's own, uvicorn's error log (its supervisor's included) and its
access log."""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.logs import uvicorn_log_config
from app.redis.server import RedisServer, free_port
from tests.support.processes import service
from tests.support.servers import base_env, leasegate_command, uvicorn_command

pytestmark = pytest.mark.multiprocess


def records(path: Path) -> list[dict[str, Any]]:
    found = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            record = json.loads(line)
        except ValueError:
            raise AssertionError(f"{path.name} line {number} is not JSON: {line!r}") from None
        assert isinstance(record, dict), line
        assert {"ts", "level", "logger", "msg", "worker"} <= record.keys(), line
        found.append(record)
    return found


def exercise(url: str, port: int) -> None:
    """A run, a 404, a 422, and a request uvicorn itself refuses."""
    answer = httpx.post(f"{url}/v1/sessions/logs/messages?wait=10", json={"text": "hi"})
    assert answer.status_code == 200, answer.text
    assert httpx.get(f"{url}/no/such/path").status_code == 404
    assert httpx.post(f"{url}/v1/sessions/logs/messages", content=b"{").status_code in (400, 422)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        sock.recv(1024)


LOG_CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "uvicorn-log.json"


def test_the_log_config_file_for_a_bare_uvicorn_is_the_one_leasegate_serve_uses() -> None:
    assert json.loads(LOG_CONFIG.read_text()) == uvicorn_log_config("json")


@pytest.mark.parametrize("how", ["leasegate-serve", "bare-uvicorn", "bare-uvicorn-workers"])
def test_every_line_on_stdout_and_stderr_is_one_json_object(
    how: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    if how == "leasegate-serve":
        command = leasegate_command("serve", "--port", str(port), "--workers", "2")
        env = base_env(LEASEGATE_DATA_DIR=str(tmp_path / "data"), LEASEGATE_LOG_FORMAT="json")
    else:
        workers = 2 if how == "bare-uvicorn-workers" else 1
        command = uvicorn_command(port, workers)
        if workers > 1:  # the supervisor runs no leasegate code but this file's formatter
            command += ["--log-config", str(LOG_CONFIG)]
        env = base_env(LEASEGATE_REDIS_URL=redis_server.url, LEASEGATE_LOG_FORMAT="json")
    with service(command, env, tmp_path, url) as started:
        exercise(url, port)
        started.process.send_signal(signal.SIGTERM)
        # A single uvicorn process raises the signal again once it has stopped.
        assert started.process.wait(timeout=20) in (0, -signal.SIGTERM)
    stdout, stderr = records(started.stdout), records(started.stderr)
    access = [r for r in stdout if r["logger"] == "uvicorn.access"]
    assert {r["status"] for r in access} >= {200, 404}
    assert all({"client", "method", "path", "status"} <= r.keys() for r in access)
    said = [(r["logger"], r["msg"]) for r in stderr]
    assert ("uvicorn.error", "Invalid HTTP request received.") in said
    assert any(logger == "app.main" and m.startswith("leasegate ready") for logger, m in said)
    assert any(logger == "uvicorn.error" and "Started server process" in m for logger, m in said)
    if how != "bare-uvicorn":  # the supervisor's own lines
        assert any(m.startswith("Started parent process") for _, m in said)
    if how == "leasegate-serve":
        assert any(m == "embedded redis-server stopped" for _, m in said)
