"""What operators read and do: the worker registry, sessions with work (paged, filtered),
one session in detail, stop/reset/cancel for any tenant, agents, and the console's feed."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from app.console import feed as feed_module
from app.console.feed import ConsoleFeed
from app.console.tokens import ConsoleTokens
from app.fleet.workers import WorkerRegistry
from app.keys import WORKERS, worker_key
from app.redis.server import RedisServer, free_port
from tests.support.api import AppClient, app_client, post, wait_status
from tests.support.servers import (
    ACME,
    API_KEYS,
    GLOBEX,
    INTERNAL,
    INTERNAL_SECRET,
    write_agents_file,
)
from tests.support.targets import RedisTarget
from tests.support.waiting import wait_until

SLOW = {"delay_ms": 60_000}


@pytest.fixture
async def api(redis_server: RedisServer, redis: Redis, tmp_path: Path) -> AsyncIterator[AppClient]:
    async with app_client(
        redis_server.url,
        lease_ttl_seconds=2.0,
        worker_heartbeat_seconds=0.2,
        shutdown_grace_seconds=0.2,
        api_keys=API_KEYS,
        internal_secret=INTERNAL_SECRET,
        agents_file=write_agents_file(tmp_path),
        headers={**INTERNAL, **ACME},  # /internal takes the secret, /v1 the key of acme
    ) as http:
        yield http


async def sessions(api: AppClient, **params: Any) -> dict[str, Any]:
    response = await api.get("/internal/sessions", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_a_worker_registers_with_its_holds_and_a_dead_one_expires(
    api: AppClient, redis: Redis
) -> None:
    slow = (await post(api, "s1", "slow", metadata=SLOW)).json()

    async def mine() -> dict[str, Any] | None:
        workers = (await api.get("/internal/workers")).json()["workers"]
        me = api.resources.workers.worker_id
        return next((w for w in workers if w["worker"] == me), None)

    async def holds_the_run() -> bool:
        found = await mine()
        return found is not None and found["runs"] == [slow["run_id"]]

    await wait_until(holds_the_run, what="the worker's entry names the run it holds")
    entry = await mine()
    assert entry is not None and entry["pid"] == os.getpid() and entry["version"]
    assert entry["started_at"] and entry["seen_ms_ago"] < 2000

    ghost = WorkerRegistry(
        redis, worker_id="ghost-host:4242", interval=0.1, held=list, finished=lambda: 0
    )
    await ghost.beat()  # one heartbeat, then it "dies": it never beats again
    listed = [w["worker"] for w in (await api.get("/internal/workers")).json()["workers"]]
    assert "ghost-host:4242" in listed

    async def ghost_gone() -> bool:
        workers = (await api.get("/internal/workers")).json()["workers"]
        return all(w["worker"] != "ghost-host:4242" for w in workers)

    await wait_until(ghost_gone, timeout=3, what="the dead worker's entry to expire")
    assert await redis.get(worker_key("ghost-host:4242")) is None

    await api.resources.workers.close()  # a clean exit leaves the registry at once
    assert await redis.zscore(WORKERS, api.resources.workers.worker_id) is None


async def test_a_worker_reports_the_runs_it_ended_and_their_rate(redis: Redis) -> None:
    ended = [0]
    registry = WorkerRegistry(
        redis, worker_id="rate-host:7", interval=1, held=list, finished=lambda: ended[0]
    )
    ended[0] = 12
    await registry.beat()
    [entry] = [w for w in await registry.alive() if w["worker"] == "rate-host:7"]
    assert entry["runs_finished"] == 12 and entry["runs_per_second"] > 0
    assert entry["pid"] == 7 and entry["host"] == "rate-host" and entry["runs"] == []
    await registry.beat()  # none ended since: the rate falls to nothing
    [entry] = [w for w in await registry.alive() if w["worker"] == "rate-host:7"]
    assert entry["runs_finished"] == 12 and entry["runs_per_second"] == 0
    await registry.close()
    assert all(w["worker"] != "rate-host:7" for w in await registry.alive())


async def test_busy_sessions_show_holder_active_run_and_queue(api: AppClient) -> None:
    first = (await post(api, "s1", "slow", metadata=SLOW)).json()
    second = (await post(api, "s1", "next")).json()
    other = await post_as_globex(api, "g1")
    await post(api, "idle", "quick", wait=5, expect=200)
    await wait_status(api, first["run_id"], "running")

    listed = (await sessions(api))["sessions"]
    assert {(s["tenant"], s["session_id"]) for s in listed} == {("acme", "s1"), ("globex", "g1")}
    s1 = next(s for s in listed if s["session_id"] == "s1")
    assert s1["busy"] is True
    assert s1["holder"]["worker"] == api.resources.workers.worker_id
    assert s1["holder"]["fence"] >= 1 and 0 < s1["holder"]["lease_expires_in_ms"] <= 2000
    assert s1["active_run"]["run_id"] == first["run_id"]
    assert s1["active_run"]["status"] == "running" and s1["active_run"]["age_ms"] >= 0
    assert set(s1["active_run"]) == {"run_id", "status", "started_at", "age_ms"}
    assert s1["queued"] == [second["run_id"]]
    assert set(s1) == {"tenant", "session_id", "busy", "holder", "active_run", "queued"}

    only_globex = (await sessions(api, tenant="globex"))["sessions"]
    assert [s["active_run"]["run_id"] for s in only_globex] == [other["run_id"]]
    everything = (await sessions(api, state="all"))["sessions"]
    idle = next(s for s in everything if s["session_id"] == "idle")
    assert idle["busy"] is False and idle["holder"] is None and idle["active_run"] is None


async def test_pages_walk_every_session_once(api: AppClient) -> None:
    names = [f"p{i}" for i in range(7)]
    await asyncio.gather(*(post(api, n, "hi", wait=5, expect=200) for n in names))
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"state": "all", "limit": 3}
        if cursor is not None:
            params["cursor"] = cursor
        page = await sessions(api, **params)
        assert len(page["sessions"]) <= 3
        seen += [s["session_id"] for s in page["sessions"]]
        cursor, pages = page["next_cursor"], pages + 1
        if cursor is None:
            break
    assert sorted(seen) == names and pages == 3

    # Admitted again while an operator pages: moved behind the cursor, listed again, and
    # no other session is skipped for it.
    first = await sessions(api, state="all", limit=3)
    again = first["sessions"][0]["session_id"]
    await post(api, again, "again", wait=5, expect=200)
    rest: list[str] = []
    cursor = first["next_cursor"]
    while cursor is not None:
        page = await sessions(api, state="all", limit=3, cursor=cursor)
        rest += [s["session_id"] for s in page["sessions"]]
        cursor = page["next_cursor"]
    listed = [s["session_id"] for s in first["sessions"]] + rest
    assert sorted(set(listed)) == names and rest[-1] == again

    bad = await api.get("/internal/sessions", params={"cursor": "not-a-cursor"})
    assert bad.status_code == 422 and bad.headers["content-type"] == "application/problem+json"
    assert (await api.get("/internal/sessions", params={"limit": 501})).status_code == 422
    assert (await api.get("/internal/sessions", params={"state": "odd"})).status_code == 422


async def test_detail_and_actions_answer_as_v1_and_are_logged(
    api: AppClient, caplog: pytest.LogCaptureFixture
) -> None:
    first = (await post(api, "s1", "slow", metadata=SLOW)).json()
    queued = (await post(api, "s1", "next")).json()
    await wait_status(api, first["run_id"], "running")

    detail = (await api.get("/internal/sessions/acme/s1")).json()
    tenant_view = (await api.get("/v1/sessions/s1")).json()
    assert {k: v for k, v in detail.items() if k not in ("tenant", "runs", "holder")} == {
        k: v for k, v in tenant_view.items() if k != "holder"
    }
    assert detail["tenant"] == "acme" and detail["state"] == "busy"
    assert {r["run_id"] for r in detail["runs"]} == {first["run_id"], queued["run_id"]}

    caplog.set_level(logging.INFO, logger="app.routers.operators")
    stopped = await api.post(
        "/internal/sessions/acme/s1/stop", headers={"X-Request-ID": "op-stop-0001"}
    )
    assert stopped.status_code == 200
    assert stopped.json() == {
        "session_id": "s1",
        "cancelled": [queued["run_id"], first["run_id"]],
        "kept": [],
    }
    assert any("op-stop-0001" in r.getMessage() for r in caplog.records)
    await wait_status(api, first["run_id"], "cancelled")

    async def idle() -> bool:
        view = (await api.get("/internal/sessions/acme/s1")).json()
        return bool(view["state"] == "idle")

    await wait_until(idle, what="the stopped session to be idle")

    slow = (await post(api, "s1", "again", metadata=SLOW)).json()
    await wait_status(api, slow["run_id"], "running")
    cancelled = await api.post(
        f"/internal/runs/{slow['run_id']}/cancel", headers={"X-Request-ID": "op-cancel-01"}
    )
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert any("op-cancel-01" in r.getMessage() for r in caplog.records)
    again = await api.post(f"/internal/runs/{slow['run_id']}/cancel")
    v1_again = await api.post(f"/v1/runs/{slow['run_id']}/cancel")
    assert (again.status_code, again.json()["type"]) == (
        v1_again.status_code,
        v1_again.json()["type"],
    )

    reset = await api.post("/internal/sessions/acme/s1/reset")
    assert reset.status_code == 200 and reset.json()["generation"] == detail["generation"] + 1

    missing = await api.post("/internal/sessions/acme/nope/stop")
    assert missing.status_code == 404
    unknown_run = await api.post("/internal/runs/garbage/cancel")
    assert unknown_run.status_code == 404
    no_secret = {"X-Internal-Secret": "", "Authorization": ""}
    assert (await api.get("/internal/sessions", headers=no_secret)).status_code == 401
    wrong = await api.post(
        "/internal/sessions/acme/s1/stop", headers={"X-Internal-Secret": "x" * 32}
    )
    assert wrong.status_code == 403


async def test_redis_unreachable_is_a_503_and_the_console_page_needs_none(
    redis: Redis,
) -> None:
    async with app_client(
        f"redis://127.0.0.1:{free_port()}/0",
        internal_secret=INTERNAL_SECRET,
        redis_timeout_seconds=0.5,
        headers=INTERNAL,
    ) as api:
        for path in ("/internal/workers", "/internal/sessions", "/internal/agents"):
            answer = await api.get(path)
            assert answer.status_code == 503, (path, answer.text)
            assert answer.headers["retry-after"]
        page = await api.get("/console")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert '<script src="/console/console.js"' in page.text and "http" not in page.text
        script = await api.get("/console/console.js")
        assert script.status_code == 200 and "EventSource" in script.text
        assert (await api.get("/console/console.css")).status_code == 200
        assert (await api.get("/console/secrets.txt")).status_code in (404, 422)


async def test_workers_and_sessions_list_on_each_topology(
    target_redis: Redis, redis_target: RedisTarget
) -> None:
    async with app_client(
        redis_target.url,
        worker_heartbeat_seconds=0.2,
        shutdown_grace_seconds=0.2,
        internal_secret=INTERNAL_SECRET,
        headers=INTERNAL,
    ) as api:
        slow = [(await post(api, f"s{i}", "slow", metadata=SLOW)).json() for i in range(4)]
        for run in slow:
            await wait_status(api, run["run_id"], "running")

        async def registered() -> bool:
            workers = (await api.get("/internal/workers")).json()["workers"]
            return api.resources.workers.worker_id in [w["worker"] for w in workers]

        await wait_until(registered, what="the worker in the registry")
        seen: list[str] = []
        cursor: str | None = None
        while True:
            page = await sessions(api, limit=3, **({"cursor": cursor} if cursor else {}))
            seen += [s["active_run"]["run_id"] for s in page["sessions"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert sorted(seen) == sorted(run["run_id"] for run in slow)
        stopped = await api.post("/internal/sessions/default/s0/stop")
        assert stopped.json()["cancelled"] == [slow[0]["run_id"]]


async def test_agents_list_each_agent_as_its_own_view(api: AppClient) -> None:
    listed = (await api.get("/internal/agents")).json()["agents"]
    assert [a["agent_id"] for a in listed] == api.resources.agents.ids()
    for agent in listed:
        assert agent == (await api.get(f"/internal/agents/{agent['agent_id']}")).json()


async def test_console_tokens_open_only_the_stream_and_only_briefly(api: AppClient) -> None:
    minted = await api.post("/internal/console/token")
    assert minted.status_code == 200 and minted.json()["expires_in"] == 60
    token = minted.json()["token"]
    assert INTERNAL_SECRET not in token
    # A token is no internal secret: it opens nothing else.
    as_secret = await api.get("/internal/workers", headers={"X-Internal-Secret": token})
    assert as_secret.status_code == 403
    plain = {"X-Internal-Secret": "", "Authorization": ""}
    forged = token[:-1] + ("0" if token[-1] != "0" else "1")
    answer = await api.get("/internal/console/stream", params={"token": forged}, headers=plain)
    assert answer.status_code == 403
    assert (await api.get("/internal/console/stream", headers=plain)).status_code == 401
    expired, _ = ConsoleTokens(INTERNAL_SECRET, lifetime=-1).issue()
    answer = await api.get("/internal/console/stream", params={"token": expired}, headers=plain)
    assert answer.status_code == 401 and "expired" in answer.json()["detail"]
    other, _ = ConsoleTokens("another-secret-of-32-characters!").issue()
    answer = await api.get("/internal/console/stream", params={"token": other}, headers=plain)
    assert answer.status_code == 403


async def test_console_feed_shows_busy_sessions_and_announces_ended_runs(api: AppClient) -> None:
    resources = api.resources
    done = (await post(api, "before", "earlier", wait=5, expect=200)).json()
    feed = ConsoleFeed(
        resources.listing,
        resources.workers.alive,
        lambda: _agents(api),
        lambda limit: resources.subscriptions.events(resources.agents.ids(), limit),
        tenant="acme",
    )
    snapshot, ended = await feed.tick()
    assert ended == []  # runs that ended before the console opened are history, not news
    assert [r["run_id"] for r in snapshot["recent_runs"]] == [done["run_id"]]

    slow = (await post(api, "s1", "slow", metadata=SLOW)).json()
    await post_as_globex(api, "g1")
    await wait_status(api, slow["run_id"], "running")
    snapshot, ended = await feed.tick()
    assert [s["session_id"] for s in snapshot["sessions"]] == ["s1"]  # the tenant filter
    assert snapshot["sessions"][0]["holder"]["worker"] == resources.workers.worker_id
    assert snapshot["counters"]["busy_sessions"] == 1 and snapshot["counters"]["running"] == 1
    assert [a["agent_id"] for a in snapshot["agents"]] == resources.agents.ids()
    json.dumps(snapshot)  # what the stream sends

    await api.post("/internal/sessions/acme/s1/stop")
    await wait_status(api, slow["run_id"], "cancelled")
    quick = (await post(api, "s2", "fast", wait=5, expect=200)).json()
    snapshot, ended = await feed.tick()
    assert {(r["run_id"], r["status"]) for r in ended} == {
        (slow["run_id"], "cancelled"),
        (quick["run_id"], "completed"),  # started and ended between two ticks
    }
    assert snapshot["sessions"] == []
    assert all(r["duration_ms"] is not None for r in ended)
    _, ended = await feed.tick()
    assert ended == []  # each run is announced once


async def post_as_globex(api: AppClient, session: str) -> dict[str, Any]:
    response = await api.post(
        f"/v1/sessions/{session}/messages",
        json={"text": "slow", "metadata": SLOW},
        headers=GLOBEX,
    )
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_the_feed_shows_the_session_busy_longest_behind_many_newer_ones(
    api: AppClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(feed_module, "SCANNED_SESSIONS", 2)  # reads 2 at each end of the index
    resources = api.resources
    slow = (await post(api, "long-job", "slow", metadata=SLOW)).json()
    await asyncio.gather(*(post(api, f"chat-{i}", "hi", wait=5, expect=200) for i in range(5)))
    last = (await post(api, "latest", "slow", metadata=SLOW)).json()
    await wait_status(api, slow["run_id"], "running")
    await wait_status(api, last["run_id"], "running")
    feed = ConsoleFeed(
        resources.listing,
        resources.workers.alive,
        lambda: _agents(api),
        lambda limit: resources.subscriptions.events(resources.agents.ids(), limit),
        tenant=None,
    )
    snapshot, _ = await feed.tick()
    assert [s["session_id"] for s in snapshot["sessions"]] == ["latest", "long-job"]


async def _agents(api: AppClient) -> list[dict[str, Any]]:
    resources = api.resources
    return [await resources.subscriptions.state(a) for a in resources.agents.ids()]
