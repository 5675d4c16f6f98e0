"""The operator commands against an HTTP transport that answers as leasegate's /internal API
does: the requests they send, what they print, their exit codes."""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.cli import main, operator
from app.redis.server import free_port
from tests.support.servers import (
    ACME,
    API_KEYS,
    INTERNAL_SECRET,
    base_env,
    leasegate_command,
    server_process,
    uvicorn_command,
)
from tests.support.waiting import wait_until_sync

SECRET = "cli-secret-0001"
BUSY = {
    "tenant": "acme",
    "session_id": "chat-1",
    "busy": True,
    "holder": {
        "worker": "host-a:4242",
        "fence": 7,
        "lease_expires_in_ms": 8200,
        "held_since": "2026-01-01T00:00:00+00:00",
    },
    "active_run": {
        "run_id": "run-1",
        "status": "running",
        "started_at": "2026-01-01T00:00:01+00:00",
        "age_ms": 65_000,
    },
    "queued": ["run-2", "run-3"],
}
IDLE = {
    "tenant": "globex",
    "session_id": "s/with slash",
    "busy": False,
    "holder": None,
    "active_run": None,
    "queued": [],
}
PROBLEM = "application/problem+json"

Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture
def seen() -> list[httpx.Request]:
    return []


@pytest.fixture
def serve_with(
    monkeypatch: pytest.MonkeyPatch, seen: list[httpx.Request]
) -> Iterator[Callable[[Handler], None]]:
    monkeypatch.setenv("LEASEGATE_INTERNAL_SECRET", SECRET)
    monkeypatch.setenv("LEASEGATE_URL", "http://leasegate.test:9000")

    def install(handler: Handler) -> None:
        def recording(request: httpx.Request) -> httpx.Response:
            seen.append(request)
            return handler(request)

        operator.use_transport(httpx.MockTransport(recording))

    yield install
    operator.use_transport(None)


def run(*argv: str) -> int:
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    assert isinstance(exited.value.code, int)
    return exited.value.code


def api(request: httpx.Request) -> httpx.Response:
    """Two pages of sessions, one session, stop, agents, workers, as the service shapes them."""
    path, params = request.url.path, request.url.params
    if request.headers.get("X-Internal-Secret") != SECRET:
        problem = {"type": "/problems/forbidden", "title": "Forbidden", "status": 403}
        return httpx.Response(403, json=problem, headers={"content-type": PROBLEM})
    if path == "/internal/sessions":
        if params.get("cursor") is None:
            return httpx.Response(200, json={"sessions": [BUSY], "next_cursor": "c1"})
        sessions = [] if params.get("state") == "busy" else [IDLE]
        return httpx.Response(200, json={"sessions": sessions, "next_cursor": None})
    if path == "/internal/sessions/acme/chat-1":
        return httpx.Response(200, json=session_view())
    if path == "/internal/sessions/acme/chat-1/stop" and request.method == "POST":
        return httpx.Response(200, json={"cancelled": ["run-1", "run-2", "run-3"], "kept": []})
    if path == "/internal/agents":
        return httpx.Response(200, json={"agents": [agent()]})
    if path == "/internal/workers":
        return httpx.Response(200, json={"workers": [worker()]})
    problem = {
        "type": "/problems/session-not-found",
        "title": "Session not found",
        "status": 404,
        "detail": f"no session at {path}",
    }
    return httpx.Response(404, json=problem, headers={"content-type": PROBLEM})


def session_view() -> dict[str, Any]:
    run = {"run_id": "run-1", "status": "running", "agent_id": "echo", "started_at": "t1"}
    return {
        "tenant": "acme",
        "session_id": "chat-1",
        "state": "busy",
        "holder": BUSY["holder"],
        "active_run": run,
        "queued": ["run-2"],
        "generation": 3,
        "last_error": None,
        "runs": [
            {**run, "created_at": "t0", "finished_at": None, "reason": None},
            {
                "run_id": "run-0",
                "status": "cancelled",
                "agent_id": "echo",
                "created_at": "t-1",
                "finished_at": "t-0",
                "reason": "stop",
            },
        ],
    }


def agent() -> dict[str, Any]:
    return {
        "agent_id": "helper",
        "subscription": "sub-b",
        "subscriptions": [
            {"id": "sub-a", "assigned": False, "state": "cooling", "retry_in": 12.5},
            {"id": "sub-b", "assigned": True, "state": "active", "retry_in": None},
        ],
        "switch_count": 1,
        "last_switch": None,
    }


def worker() -> dict[str, Any]:
    return {
        "worker": "host-a:4242",
        "host": "host-a",
        "pid": 4242,
        "started_at": "2026-01-01T00:00:00+00:00",
        "last_seen": "2026-01-01T00:10:00+00:00",
        "seen_ms_ago": 900,
        "runs": ["run-1"],
        "runs_finished": 12,
    }


def test_sessions_lists_every_page_as_a_table(
    serve_with: Callable[[Handler], None], seen: list[httpx.Request], capsys: Any
) -> None:
    serve_with(api)
    assert run("sessions", "--tenant", "acme") == 0
    out = capsys.readouterr().out
    header, busy, idle = out.splitlines()[:3]
    assert header.split() == [
        *("TENANT", "SESSION", "STATE", "HOLDER", "FENCE", "LEASE", "LEFT"),
        *("ACTIVE", "RUN", "STATUS", "AGE", "QUEUED"),
    ]
    assert busy.split() == [
        *("acme", "chat-1", "busy", "host-a:4242", "7", "8.2s"),
        *("run-1", "running", "1m05s", "2"),
    ]
    assert idle.split()[:3] == ["globex", "s/with", "slash"]
    assert "2 sessions with work of tenant acme" in out
    assert [str(r.url) for r in seen] == [
        "http://leasegate.test:9000/internal/sessions?state=all&limit=200&tenant=acme",
        "http://leasegate.test:9000/internal/sessions?state=all&limit=200&tenant=acme&cursor=c1",
    ]
    assert all(r.headers["X-Internal-Secret"] == SECRET for r in seen)


def test_sessions_busy_json_is_the_apis_sessions(
    serve_with: Callable[[Handler], None], seen: list[httpx.Request], capsys: Any
) -> None:
    serve_with(api)
    assert run("sessions", "--busy", "--json") == 0
    assert json.loads(capsys.readouterr().out) == {"sessions": [BUSY]}
    assert seen[0].url.params["state"] == "busy"


def test_session_shows_holder_queue_and_last_runs(
    serve_with: Callable[[Handler], None], capsys: Any
) -> None:
    serve_with(api)
    assert run("session", "acme/chat-1") == 0
    out = capsys.readouterr().out
    assert "state       busy" in out
    assert "holder      host-a:4242 (fence 7, lease 8.2s left, since " in out
    assert "active run  run-1 running, agent echo, started t1" in out
    assert "queue       1: run-2" in out
    assert "run-0  cancelled  echo   t-1      t-0       stop" in out


def test_stop_posts_and_says_what_ended(
    serve_with: Callable[[Handler], None], seen: list[httpx.Request], capsys: Any
) -> None:
    serve_with(api)
    assert run("stop", "acme/chat-1") == 0
    assert capsys.readouterr().out.strip() == "stopped acme/chat-1; ended: run-1, run-2, run-3"
    assert (seen[0].method, seen[0].url.path) == ("POST", "/internal/sessions/acme/chat-1/stop")


def test_session_ids_are_one_path_segment(
    serve_with: Callable[[Handler], None], seen: list[httpx.Request], capsys: Any
) -> None:
    serve_with(api)
    assert run("stop", "acme/a/b?c") == 1
    assert seen[0].url.raw_path == b"/internal/sessions/acme/a%2Fb%3Fc/stop"


def test_agents_and_workers_tables(serve_with: Callable[[Handler], None], capsys: Any) -> None:
    serve_with(api)
    assert run("agents") == 0
    agents = capsys.readouterr().out.splitlines()
    assert agents[1].split() == [
        *("helper", "sub-b", "sub-a", "cooling", "12.5s,", "sub-b*", "active", "1", "-"),
    ]
    assert run("workers") == 0
    workers = capsys.readouterr().out.splitlines()
    assert workers[1].split() == [
        *("host-a:4242", "host-a", "4242", "2026-01-01T00:00:00+00:00", "900ms", "run-1", "12"),
    ]


def test_an_api_error_prints_the_problem_and_exits_1(
    serve_with: Callable[[Handler], None], capsys: Any
) -> None:
    serve_with(api)
    assert run("session", "acme/nope") == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == (
        "leasegate session: 404 Session not found: no session at /internal/sessions/acme/nope"
    )


def test_a_wrong_secret_exits_1(
    serve_with: Callable[[Handler], None], monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    serve_with(api)
    monkeypatch.setenv("LEASEGATE_INTERNAL_SECRET", "wrong-secret")
    assert run("workers", "--json") == 1
    assert capsys.readouterr().err.strip() == "leasegate workers: 403 Forbidden"


def test_an_unreachable_service_exits_1(serve_with: Callable[[Handler], None], capsys: Any) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    serve_with(refuse)
    assert run("sessions") == 1
    assert "cannot reach leasegate at http://leasegate.test:9000" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [["session", "no-slash"], ["stop", "/x"], ["sessions", "--bogus"], ["frobnicate"], []],
)
def test_usage_errors_exit_2(
    serve_with: Callable[[Handler], None], seen: list[httpx.Request], argv: list[str]
) -> None:
    serve_with(api)
    assert run(*argv) == 2
    assert seen == []


def test_no_secret_is_a_usage_error(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    monkeypatch.delenv("LEASEGATE_INTERNAL_SECRET", raising=False)
    assert run("workers") == 2
    assert "LEASEGATE_INTERNAL_SECRET is not set" in capsys.readouterr().err


@pytest.mark.multiprocess
def test_the_commands_against_a_running_service(redis_server: Any, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = base_env(
        LEASEGATE_REDIS_URL=redis_server.url,
        LEASEGATE_API_KEYS=json.dumps(API_KEYS),
        LEASEGATE_INTERNAL_SECRET=INTERNAL_SECRET,
        LEASEGATE_LOG_LEVEL="WARNING",
    )
    session = f"cli-{uuid.uuid4().hex[:8]}"
    cli_env = {**base_env(), "LEASEGATE_URL": url, "LEASEGATE_INTERNAL_SECRET": INTERNAL_SECRET}

    def leasegate(*argv: str, **extra: str) -> subprocess.CompletedProcess[str]:
        command = leasegate_command(*argv)
        env = {**cli_env, **extra}
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)

    with server_process(uvicorn_command(port, workers=2), env, tmp_path / "server.log", url):
        slow = {"text": "slowly", "metadata": {"delay_ms": 60_000}}
        answer = httpx.post(f"{url}/v1/sessions/{session}/messages", json=slow, headers=ACME)
        assert answer.status_code == 202, answer.text
        run_id = answer.json()["run_id"]

        busy = leasegate("sessions", "--busy", "--tenant", "acme")
        assert busy.returncode == 0, busy.stderr
        [row] = [line.split() for line in busy.stdout.splitlines() if session in line]
        assert row[:3] == ["acme", session, "busy"]
        assert row[6:8] == [run_id, "running"]
        assert re.fullmatch(r".+:\d+", row[3])  # the holder, host:pid

        stopped = leasegate("stop", f"acme/{session}")
        assert stopped.returncode == 0, stopped.stderr
        assert stopped.stdout.strip() == f"stopped acme/{session}; ended: {run_id}"

        def state() -> str:
            shown = leasegate("session", f"acme/{session}", "--json")
            assert shown.returncode == 0, shown.stderr
            return str(json.loads(shown.stdout)["state"])

        wait_until_sync(lambda: state() == "idle", 15, "the session idle")
        detail = leasegate("session", f"acme/{session}")
        assert f"{run_id}  cancelled" in detail.stdout

        wrong = leasegate("sessions", LEASEGATE_INTERNAL_SECRET="not-the-secret")
        assert wrong.returncode == 1
        assert wrong.stderr.startswith("leasegate sessions: 403 "), wrong.stderr
        unknown = leasegate("session", "acme/no-such-session-here")
        assert unknown.returncode == 1
        assert unknown.stderr.startswith("leasegate session: 404 "), unknown.stderr
