"""An invalid configuration ends the service at start-up with one message: no Redis started
by `leasegate serve`, no worker started again and again by uvicorn's supervisor."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from app.main import STARTUP_FAILURE
from app.redis.server import free_port
from tests.support.servers import base_env, leasegate_command, uvicorn_command

pytestmark = pytest.mark.multiprocess

DEADLINE = 30.0
"""Seconds a refused start may take at most (workers import the app first)."""
BAD_ENTRYPOINT = "[[agents]]\nid='mine'\nbackend='python'\nentrypoint='no_such_package.agents:x'\n"
MESSAGE = (
    "leasegate: invalid configuration: python agent 'mine': entrypoint "
    "'no_such_package.agents:x' cannot be imported: ModuleNotFoundError"
)


def run(command: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=DEADLINE)
    return result, time.monotonic() - started


def bad_agents_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    path = tmp_path / "agents.toml"
    path.write_text(BAD_ENTRYPOINT)
    return base_env(
        LEASEGATE_AGENTS_FILE=str(path), LEASEGATE_DATA_DIR=str(tmp_path / "data"), **extra
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, MESSAGE),
        (
            {"LEASEGATE_LEASE_TTL_SECONDS": "0"},
            "leasegate: invalid configuration: LEASEGATE_LEASE_TTL_SECONDS: Input should be "
            "greater than 0",
        ),
    ],
    ids=["bad-entrypoint", "bad-setting"],
)
def test_serve_checks_the_configuration_before_it_starts_anything(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    result, _ = run(
        leasegate_command("serve", "--port", str(free_port())), bad_agents_env(tmp_path, **env)
    )
    assert result.returncode == 2
    assert result.stderr.count("invalid configuration") == 1
    assert result.stderr.startswith(message), result.stderr
    assert "redis-server" not in result.stdout + result.stderr
    assert not (tmp_path / "data").exists()


def test_a_single_uvicorn_process_exits_with_the_startup_failure_code(tmp_path: Path) -> None:
    command = uvicorn_command(free_port(), workers=1)
    result, _ = run(command, bad_agents_env(tmp_path))
    assert result.returncode == STARTUP_FAILURE
    assert result.stderr.count(MESSAGE) == 1, result.stderr


def test_uvicorn_workers_on_an_invalid_configuration_end_the_server_instead_of_respawning(
    tmp_path: Path,
) -> None:
    workers = 3
    result, took = run(uvicorn_command(free_port(), workers), bad_agents_env(tmp_path))
    output = result.stderr + result.stdout
    # uvicorn's supervisor stops for the first worker that exits with STARTUP_FAILURE and
    # (uvicorn 0.55) exits 0 itself; what matters is that it ended, and started nothing more.
    assert result.returncode in (0, STARTUP_FAILURE), output
    assert "failed to start, stopping the parent process" in output
    assert "died" not in output  # uvicorn's word for a worker it is about to replace
    assert "Started server process" not in output
    children = set(re.findall(r"Waiting for child process \[(\d+)\]", output))
    assert len(children) <= workers
    # Each worker started at once may report it before the supervisor stops the rest.
    assert 1 <= output.count(MESSAGE) <= workers
    assert took < DEADLINE
