"""The service's processes, as a user starts and stops them: `leasegate serve` and a bare
`uvicorn --factory app.main:create_app`. An invalid configuration ends them at once with
one message; one instance per data folder; a killed supervisor takes its workers (and its
embedded Redis) with it; an unreachable Redis is reported, not flooded; Ctrl-C says what
it waits for."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import redis

from app.redis.server import RedisServer, free_port
from app.supervision import STARTUP_FAILURE
from tests.support.processes import MARK, kill_quietly, left_behind, marked, new_mark, service
from tests.support.servers import base_env, leasegate_command, uvicorn_command
from tests.support.waiting import wait_until_sync

pytestmark = pytest.mark.multiprocess

DEADLINE = 30.0
"""Seconds a refused start may take at most (workers import the app first)."""
BAD_ENTRYPOINT = "[[agents]]\nid='mine'\nbackend='python'\nentrypoint='no_such_package.agents:x'\n"
ENTRYPOINT_PROBLEM = (
    "invalid configuration: python agent 'mine': entrypoint 'no_such_package.agents:x' "
    "cannot be imported: ModuleNotFoundError"
)
SETTING_PROBLEM = "invalid configuration: LEASEGATE_LEASE_TTL_SECONDS: Input should be greater"


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


def messages(stderr: str) -> list[str]:
    """The `msg` of each line, every line being one JSON object."""
    return [json.loads(line)["msg"] for line in stderr.splitlines()]


@pytest.mark.parametrize(
    ("env", "problem"),
    [({}, ENTRYPOINT_PROBLEM), ({"LEASEGATE_LEASE_TTL_SECONDS": "0"}, SETTING_PROBLEM)],
    ids=["bad-entrypoint", "bad-setting"],
)
def test_serve_checks_the_configuration_before_it_starts_anything(
    tmp_path: Path, env: dict[str, str], problem: str
) -> None:
    result, _ = run(
        leasegate_command("serve", "--port", str(free_port())), bad_agents_env(tmp_path, **env)
    )
    assert result.returncode == 2
    [message] = messages(result.stderr)
    assert message.startswith(problem), message
    assert result.stdout == ""
    assert not (tmp_path / "data").exists()


def test_the_refusal_is_plain_text_with_the_text_log_format(tmp_path: Path) -> None:
    env = bad_agents_env(tmp_path, LEASEGATE_LOG_FORMAT="text")
    result, _ = run(leasegate_command("serve", "--port", str(free_port())), env)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(f"leasegate: {ENTRYPOINT_PROBLEM}")


def test_a_single_uvicorn_process_exits_with_the_startup_failure_code(tmp_path: Path) -> None:
    result, _ = run(uvicorn_command(free_port(), workers=1), bad_agents_env(tmp_path))
    assert result.returncode == STARTUP_FAILURE
    [refusal] = [m for m in messages(result.stderr) if "invalid configuration" in m]
    assert refusal.startswith(ENTRYPOINT_PROBLEM)


def test_uvicorn_workers_on_an_invalid_configuration_end_the_server_with_an_error(
    tmp_path: Path,
) -> None:
    mark = new_mark()
    command = uvicorn_command(free_port(), workers=3)
    result, took = run(command, {**bad_agents_env(tmp_path), MARK: mark})
    output = result.stderr + result.stdout
    # The first worker to fail ends the supervisor (uvicorn's own would exit 0).
    assert result.returncode == -signal.SIGKILL, output
    refusals = [line for line in output.splitlines() if "invalid configuration" in line]
    assert len(refusals) == 1, output
    assert "stopping uvicorn's supervisor" in refusals[0]
    assert ENTRYPOINT_PROBLEM in refusals[0]
    assert "died" not in output  # uvicorn's word for a worker it is about to replace
    assert "Started server process" not in output
    assert took < DEADLINE
    # The other workers die with the supervisor.
    wait_until_sync(lambda: not marked(mark), 5, "the workers gone")


def test_a_second_serve_on_the_same_data_folder_refuses_and_touches_nothing(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    port = free_port()
    env = base_env(LEASEGATE_DATA_DIR=str(data))
    first_command = leasegate_command("serve", "--port", str(port), "--workers", "2")
    with service(first_command, env, tmp_path / "first", f"http://127.0.0.1:{port}") as first:
        metrics_before = snapshot(data / "metrics")
        redis_before = snapshot(data / "redis")
        family_before = first.family()
        mark = new_mark()
        second, _ = run(leasegate_command("serve", "--port", str(free_port())), {**env, MARK: mark})
        assert second.returncode == 4, second.stderr
        [message] = messages(second.stderr)
        assert f"is in use by leasegate serve pid {first.process.pid}" in message
        assert f"on http://127.0.0.1:{port}" in message
        assert "LEASEGATE_DATA_DIR" in message
        assert second.stdout == ""
        assert not marked(mark)  # it started no redis-server, no worker
        # The first instance's files are where they were (it may have added some).
        assert metrics_before.items() <= snapshot(data / "metrics").items()
        assert redis_before.items() <= snapshot(data / "redis").items()
        assert first.family() == family_before
        assert httpx.get(f"{first.url}/readyz").status_code == 200


def snapshot(folder: Path) -> dict[str, int]:
    """Each file's inode: a file removed and made again has a new one."""
    return {str(path.relative_to(folder)): path.stat().st_ino for path in folder.rglob("*")}


def test_kill_9_of_serve_takes_its_workers_and_redis_with_it(tmp_path: Path) -> None:
    port = free_port()
    env = base_env(LEASEGATE_DATA_DIR=str(tmp_path / "data"))
    command = leasegate_command("serve", "--port", str(port), "--workers", "2")
    with service(command, env, tmp_path, f"http://127.0.0.1:{port}") as serve:
        started = serve.family() - {serve.process.pid}
        try:
            assert len(started) >= 3, serve.output()  # two workers and a redis-server
            serve.process.kill()
            serve.process.wait()
            wait_until_sync(lambda: not (marked(serve.mark) & started), 2.0, "children gone")
        finally:
            kill_quietly(started)


def test_an_unreachable_redis_is_reported_once_per_interval_and_ready_waits_for_it(
    tmp_path: Path,
) -> None:
    redis_port, port = free_port(), free_port()
    password = "pw-s3cret-0004"
    interval = 0.5
    env = base_env(
        LEASEGATE_REDIS_URL=f"redis://:{password}@127.0.0.1:{redis_port}/0",
        LEASEGATE_REDIS_WARNING_INTERVAL_SECONDS=str(interval),
        LEASEGATE_REDIS_TIMEOUT_SECONDS="0.5",
    )
    url = f"http://127.0.0.1:{port}"
    redacted = f"Redis at redis://:***@127.0.0.1:{redis_port}/0 is unreachable"
    command = uvicorn_command(port, workers=2)
    with service(command, env, tmp_path / "app", url, wait_ready=False) as app:

        def reports() -> dict[str, list[float]]:
            """Per worker, the times of its outage warnings."""
            found: dict[str, list[float]] = {}
            for line in app.lines(redacted):
                record = json.loads(line)
                found.setdefault(record["worker"], []).append(stamp(record["ts"]))
            return found

        wait_until_sync(lambda: readyz(url) == 503, 30, "/readyz answering 503")
        wait_until_sync(
            lambda: len(r := reports()) == 2 and all(len(t) >= 4 for t in r.values()),
            30,
            "four outage warnings from each worker",
        )
        for times in reports().values():
            gaps = [b - a for a, b in itertools.pairwise(times)]
            assert min(gaps) >= interval * 0.8, gaps  # record times, not the filter's
        assert "more like it in the last 0.5 s not shown" in app.output()  # it was a flood
        assert password not in app.output()
        assert "leasegate ready" not in app.output()

        with RedisServer(tmp_path / "redis", port=redis_port) as server:
            with redis.Redis(port=server.port) as client:
                client.config_set("requirepass", password)
            wait_until_sync(lambda: readyz(url) == 200, 15, "/readyz answering 200")
            wait_until_sync(lambda: len(app.lines("leasegate ready")) == 2, 15, "each worker ready")


def stamp(ts: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(ts).timestamp()


def readyz(url: str) -> int | None:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code
    except httpx.HTTPError:
        return None


def test_ctrl_c_with_a_run_in_flight_says_what_it_waits_for(tmp_path: Path) -> None:
    port = free_port()
    grace = 1
    env = base_env(
        LEASEGATE_DATA_DIR=str(tmp_path / "data"), LEASEGATE_SHUTDOWN_GRACE_SECONDS=str(grace)
    )
    command = leasegate_command("serve", "--port", str(port), "--workers", "2")
    with service(command, env, tmp_path, f"http://127.0.0.1:{port}") as serve:
        answer = httpx.post(
            f"{serve.url}/v1/sessions/slow/messages",
            json={"text": "take your time", "metadata": {"delay_ms": 60_000}},
        )
        assert answer.json()["status"] == "running", answer.text
        serve.process.send_signal(signal.SIGINT)
        assert serve.process.wait(timeout=grace + 15) == 0
    said = messages(serve.stderr.read_text())
    assert any(
        m.startswith("SIGINT: stopping; each worker lets its runs in flight finish for up to 1s")
        for m in said
    ), said
    assert (
        "stopping: waiting up to 1s (LEASEGATE_SHUTDOWN_GRACE_SECONDS) for 1 run(s) in flight "
        "to finish, then interrupting them"
    ) in said
    assert not left_behind(serve.mark)
    assert os.path.exists(tmp_path / "data" / "leasegate.lock")


WORKER_ONLY_FAILURE = """
import multiprocessing

if multiprocessing.parent_process() is not None:  # a uvicorn worker, not leasegate serve
    raise RuntimeError("this agent cannot start in a worker")


class Agent:
    async def stream(self, request):
        yield request.text

    async def aclose(self):
        pass
"""


def test_serve_exits_3_when_its_workers_cannot_start(tmp_path: Path) -> None:
    """A configuration the check passes but the workers refuse: each says so, serve stops
    them all, once, and exits with uvicorn's startup failure code (not 0, not a loop)."""
    (tmp_path / "worker_only_failure.py").write_text(WORKER_ONLY_FAILURE)
    agents = tmp_path / "agents.toml"
    agents.write_text(
        "[[agents]]\nid='w'\nbackend='python'\nentrypoint='worker_only_failure:Agent'\n"
    )
    mark = new_mark()
    env = base_env(
        LEASEGATE_AGENTS_FILE=str(agents),
        LEASEGATE_DATA_DIR=str(tmp_path / "data"),
        PYTHONPATH=str(tmp_path),
        **{MARK: mark},
    )
    command = leasegate_command("serve", "--port", str(free_port()), "--workers", "3")
    result, took = run(command, env)
    assert result.returncode == STARTUP_FAILURE, result.stderr
    said = messages(result.stderr)
    refusals = [m for m in said if "invalid configuration" in m]
    assert len(refusals) == 1, said
    assert "this agent cannot start in a worker" in refusals[0]
    assert "stopping uvicorn's supervisor" not in refusals[0]  # serve stops them itself
    assert "embedded redis-server stopped" in said
    assert not any("died" in m or "Started server process" in m for m in said)
    assert took < DEADLINE
    assert not left_behind(mark)


def test_serve_on_a_port_in_use_exits_3_and_stops_its_redis(tmp_path: Path) -> None:
    mark = new_mark()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = base_env(LEASEGATE_DATA_DIR=str(tmp_path / "data"), **{MARK: mark})
        result, _ = run(leasegate_command("serve", "--port", str(port)), env)
    assert result.returncode == STARTUP_FAILURE
    said = messages(result.stderr)
    assert any("Address already in use" in m for m in said), said
    assert not any(m.startswith("listening on") for m in said)
    assert "embedded redis-server stopped" in said
    assert not marked(mark)
