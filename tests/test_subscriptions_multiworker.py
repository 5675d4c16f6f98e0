"""The auto-switch across real worker processes: 4 workers and a second server process."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from tests.support.scenarios import failing_runs_over_workers_switch_exactly_once
from tests.support.servers import Servers

pytestmark = pytest.mark.multiprocess


async def test_twenty_failing_runs_over_four_workers_switch_exactly_once(
    servers: Servers, redis: Redis
) -> None:
    await failing_runs_over_workers_switch_exactly_once(servers)  # `redis` emptied the database
