"""One run per session across real worker processes: uvicorn --workers 4, plus a second
server process, sharing the suite's redis-server and hit by concurrent httpx clients."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import pytest

from tests.support.api import post, session_state, wait_all_terminal
from tests.support.checks import run_violations
from tests.support.scenarios import (
    cancel_and_reset_from_another_process,
    new_session,
    stop_from_another_process,
)
from tests.support.servers import Servers

pytestmark = pytest.mark.multiprocess


async def test_a_burst_of_50_messages_runs_one_at_a_time_in_admission_order(
    servers: Servers,
) -> None:
    session = new_session()
    posted = await asyncio.gather(
        *(
            post(servers.four_workers, session, f"m{i}", metadata={"delay_ms": 50}, expect=202)
            for i in range(50)
        )
    )
    assert sum(p.json()["status"] == "running" for p in posted) == 1
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
            await post(url, session, f"s{n}-{i}", expect=202)

    await asyncio.gather(*(sender(n) for n in range(3)))
    runs = await wait_all_terminal(servers.four_workers, session, 90, timeout=30)
    assert {r["status"] for r in runs} == {"completed"}
    assert run_violations(runs) == []
    state = await session_state(servers.other_process, session)
    assert state["state"] == "idle" and state["queued"] == []


async def test_stop_from_another_process_stops_the_holders_run(servers: Servers) -> None:
    await stop_from_another_process(servers)


async def test_cancel_and_reset_from_another_process(servers: Servers) -> None:
    await cancel_and_reset_from_another_process(servers)


def test_the_checker_catches_overlapping_and_out_of_order_runs() -> None:
    def run(run_id: str, created: int, start: int, end: int, fence: int = 1) -> dict[str, Any]:
        def iso(ms: int) -> str:
            return datetime.fromtimestamp(1_800_000_000 + ms / 1000).isoformat()

        return {
            "run_id": run_id,
            "created_at": iso(created),
            "started_at": iso(start),
            "finished_at": iso(end),
            "fence": fence,
        }

    serial = [run("a", 0, 1, 10), run("b", 2, 10, 20), run("c", 3, 20, 30, fence=2)]
    assert run_violations(serial) == []
    overlapping = [run("a", 0, 1, 10), run("b", 2, 5, 20)]
    assert any("before" in v for v in run_violations(overlapping))
    reordered = [run("a", 0, 1, 10), run("b", 2, 20, 30), run("c", 3, 10, 20)]
    assert "runs did not start in admission order" in run_violations(reordered)
    fenced_back = [run("a", 0, 1, 10, fence=3), run("b", 2, 10, 20, fence=2)]
    assert any("fence fell" in v for v in run_violations(fenced_back))
