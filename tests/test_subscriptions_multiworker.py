"""The auto-switch across real worker processes: 4 workers and a second server process."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from redis.asyncio import Redis

from tests.servers import INTERNAL, Servers, client

pytestmark = pytest.mark.multiprocess


async def post_failing_run(url: str, session: str) -> dict[str, Any]:
    async with client(url) as http:
        response = await http.post(
            f"/v1/sessions/{session}/messages",
            params={"wait": 20},
            json={"text": "hi", "agent_id": "helper",
                  "metadata": {"exhausted_subscriptions": ["sub-a"]}},
        )  # fmt: skip
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_twenty_failing_runs_over_four_workers_switch_exactly_once(
    servers: Servers, redis: Redis
) -> None:
    prefix = uuid.uuid4().hex[:8]
    urls = [servers.four_workers if i % 5 else servers.other_process for i in range(20)]
    runs = await asyncio.gather(
        *(post_failing_run(url, f"{prefix}-{i}") for i, url in enumerate(urls))
    )
    async with client(servers.four_workers, INTERNAL) as http:
        state = (await http.get("/internal/agents/helper")).json()
        events = (await http.get("/internal/events", params={"agent_id": "helper"})).json()
    assert [(r["status"], r["subscription"]) for r in runs] == [("completed", "sub-b")] * 20
    assert len({r["worker"] for r in runs}) >= 2  # the runs really ran on several workers
    assert state["subscription"] == "sub-b" and state["switch_count"] == 1
    assert [(e["type"], e["from"], e["to"]) for e in events["events"]] == [
        ("subscription_switched", "sub-a", "sub-b")
    ]
