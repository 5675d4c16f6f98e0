"""The auto-switch across real worker processes: 4 workers and a second server process."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from tests.support.scenarios import failing_runs_over_workers_switch_exactly_once
from tests.support.servers import INTERNAL, Servers, client

pytestmark = pytest.mark.multiprocess


async def test_twenty_failing_runs_over_four_workers_switch_exactly_once(
    servers: Servers, redis: Redis
) -> None:
    await failing_runs_over_workers_switch_exactly_once(servers)  # `redis` emptied the database
    # Every worker sees the refused subscription cooling, counted once per refusal, and an
    # enable sent to one process makes it active for all.
    async with (
        client(servers.four_workers, INTERNAL) as workers,
        client(servers.other_process, INTERNAL) as other,
    ):
        a = await standing(other, "sub-a")
        assert (a["state"], a["kind"], a["assigned"]) == ("cooling", "rate_limit", False)
        assert 1 <= a["refusals"]["rate_limit"] <= 20
        assert 50 < a["retry_in"] <= 60  # the default rate-limit cooldown: the echo says none
        enabled = await workers.post("/internal/agents/helper/subscriptions/sub-a/enable")
        assert enabled.json()["was"] == "cooling"
        for http in (workers, other):
            assert (await standing(http, "sub-a"))["state"] == "active"


async def standing(http: httpx.AsyncClient, subscription: str) -> dict[str, Any]:
    state = (await http.get("/internal/agents/helper")).json()
    found: dict[str, Any] = next(s for s in state["subscriptions"] if s["id"] == subscription)
    return found
