"""One run per session across real worker processes: uvicorn --workers 4, plus a second
server process, sharing the suite's redis-server and hit by concurrent httpx clients."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime
from typing import Any

import httpx
import pytest

from tests.checks import run_violations
from tests.servers import Servers, client
from tests.waiting import wait_until

pytestmark = pytest.mark.multiprocess


def new_session() -> str:
    return f"mw-{uuid.uuid4().hex[:12]}"


async def post(url: str, session: str, text: str, **body: Any) -> dict[str, Any]:
    # A fresh connection per message, so the kernel spreads them over the workers.
    async with client(url) as http:
        response = await http.post(f"/v1/sessions/{session}/messages", json={"text": text, **body})
    assert response.status_code == 202, response.text
    result: dict[str, Any] = response.json()
    return result


async def all_runs(url: str, session: str) -> list[dict[str, Any]]:
    async with client(url) as http:
        runs: list[dict[str, Any]] = []
        offset: int | None = 0
        while offset is not None:
            page = (await http.get(f"/v1/sessions/{session}/runs",
                                   params={"limit": 100, "offset": offset})).json()  # fmt: skip
            runs.extend(page["runs"])
            offset = page["next_offset"]
    return runs


async def wait_all_terminal(
    url: str, session: str, count: int, timeout: float = 60
) -> list[dict[str, Any]]:
    async def done() -> bool:
        runs = await all_runs(url, session)
        return len(runs) == count and all(r["status"] not in ("queued", "running") for r in runs)

    await wait_until(done, timeout, f"{count} runs of {session} to end")
    return await all_runs(url, session)


async def session_state(url: str, session: str) -> dict[str, Any]:
    async with client(url) as http:
        state: dict[str, Any] = (await http.get(f"/v1/sessions/{session}")).json()
    return state


async def is_running(http: httpx.AsyncClient, run_id: str) -> bool:
    return bool((await http.get(f"/v1/runs/{run_id}")).json()["status"] == "running")


async def test_a_burst_of_50_messages_runs_one_at_a_time_in_admission_order(
    servers: Servers,
) -> None:
    session = new_session()
    posted = await asyncio.gather(
        *(
            post(servers.four_workers, session, f"m{i}", metadata={"delay_ms": 50})
            for i in range(50)
        )
    )
    assert sum(p["status"] == "running" for p in posted) == 1
    runs = await wait_all_terminal(servers.four_workers, session, 50)
    assert {r["status"] for r in runs} == {"completed"}
    assert run_violations(runs) == []
    assert (await session_state(servers.four_workers, session))["state"] == "idle"


async def test_messages_in_a_tight_loop_while_the_holder_finishes_are_never_stranded(
    servers: Servers,
) -> None:
    session = new_session()

    async def sender(n: int) -> None:
        for i in range(30):
            url = servers.four_workers if i % 3 else servers.other_process
            await post(url, session, f"s{n}-{i}")

    await asyncio.gather(*(sender(n) for n in range(3)))
    runs = await wait_all_terminal(servers.four_workers, session, 90, timeout=30)
    assert {r["status"] for r in runs} == {"completed"}
    assert run_violations(runs) == []
    state = await session_state(servers.other_process, session)
    assert state["state"] == "idle" and state["queued"] == []


async def test_stop_from_another_process_stops_the_holders_run_promptly(servers: Servers) -> None:
    session = new_session()
    running = await post(servers.other_process, session, "long", metadata={"delay_ms": 60_000})
    queued = await post(servers.other_process, session, "queued")
    async with client(servers.four_workers) as http:
        await wait_until(lambda: is_running(http, running["run_id"]), what="run started")
        asked_at = time.time()
        stopped = (await http.post(f"/v1/sessions/{session}/stop")).json()
        assert sorted(stopped["cancelled"]) == sorted([running["run_id"], queued["run_id"]])

        async def cancelled() -> bool:
            run = (await http.get(f"/v1/runs/{running['run_id']}")).json()
            return bool(run["status"] == "cancelled")

        await wait_until(cancelled, 5, "the holder to stop the run")
        run = (await http.get(f"/v1/runs/{running['run_id']}")).json()
        stop_latency = datetime.fromisoformat(run["finished_at"]).timestamp() - asked_at
        print(f"stop latency across processes: {stop_latency * 1000:.1f} ms")
        assert stop_latency < 0.5
        after = await http.post(f"/v1/sessions/{session}/messages", params={"wait": 10},
                                json={"text": "after stop"})  # fmt: skip
        assert after.status_code == 200 and after.json()["status"] == "completed"


async def test_cancel_and_reset_from_another_process(servers: Servers) -> None:
    session = new_session()
    doomed = await post(servers.other_process, session, "doomed",
                        metadata={"delay_ms": 500, "fail": "error"})  # fmt: skip
    async with client(servers.four_workers) as http:
        await wait_until(lambda: is_running(http, doomed["run_id"]), what="run started")
        reset = (await http.post(f"/v1/sessions/{session}/reset")).json()
        assert reset["generation"] == 2
        fresh = await http.post(f"/v1/sessions/{session}/messages", params={"wait": 10},
                                json={"text": "fresh", "busy_policy": "reject"})  # fmt: skip
        assert fresh.status_code == 200 and fresh.json()["status"] == "completed"
        turns = (await http.get(f"/v1/sessions/{session}/transcript")).json()["turns"]
        assert [t["text"] for t in turns] == ["fresh", "echo: fresh"]
        slow = await post(servers.other_process, session, "slow", metadata={"delay_ms": 60_000})
        await wait_until(lambda: is_running(http, slow["run_id"]), what="run started")
        cancelled = await http.post(f"/v1/runs/{slow['run_id']}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert (await session_state(servers.other_process, session))["state"] == "idle"


def test_the_checker_catches_overlapping_and_out_of_order_runs() -> None:
    def run(run_id: str, created: int, start: int, end: int, fence: int = 1) -> dict[str, Any]:
        def iso(ms: int) -> str:
            return datetime.fromtimestamp(1_800_000_000 + ms / 1000).isoformat()

        return {"run_id": run_id, "created_at": iso(created), "started_at": iso(start),
                "finished_at": iso(end), "fence": fence}  # fmt: skip

    serial = [run("a", 0, 1, 10), run("b", 2, 10, 20), run("c", 3, 20, 30, fence=2)]
    assert run_violations(serial) == []
    overlapping = [run("a", 0, 1, 10), run("b", 2, 5, 20)]
    assert any("before" in v for v in run_violations(overlapping))
    reordered = [run("a", 0, 1, 10), run("b", 2, 20, 30), run("c", 3, 10, 20)]
    assert "runs did not start in admission order" in run_violations(reordered)
    fenced_back = [run("a", 0, 1, 10, fence=3), run("b", 2, 10, 20, fence=2)]
    assert any("fence fell" in v for v in run_violations(fenced_back))
