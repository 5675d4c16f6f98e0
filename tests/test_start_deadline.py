"""`priority` and `start_within_seconds` on messages and tasks: a run still queued when its
start deadline passes ends `expired` (when its turn comes, or earlier by the sweeper), and
owes its completion webhook like any run that ends."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from redis.asyncio import Redis

from app.redis.server import RedisServer
from app.sessions.ref import SessionRef
from tests.support.api import app_client, post, run_of, wait_status
from tests.support.receiver import SECRET
from tests.support.servers import INTERNAL, INTERNAL_SECRET

HOOK = "http://127.0.0.1:9/hook"  # never answers: the delivery stays owed


async def test_a_run_past_its_start_deadline_ends_expired_when_its_turn_comes(
    redis: Redis, redis_server: RedisServer
) -> None:
    settings: dict[str, Any] = {
        "sweep_interval_seconds": 3600,  # only the holder's next start may end it
        "webhook_secret": SECRET,
        "webhook_allowed_hosts": ["127.0.0.1"],
        "webhook_retry_base_seconds": 3600,
    }
    async with app_client(redis_server.url, **settings) as api:
        first = (await post(api, "d", "slow", metadata={"delay_ms": 800}, expect=202)).json()
        late = (
            await post(
                api, "d", "in time?", start_within_seconds=0.2, priority=8, webhook=HOOK, expect=202
            )
        ).json()
        patient = (await post(api, "d", "whenever", expect=202)).json()
        queued = await run_of(api, late["run_id"])
        assert queued["status"] == "queued" and queued["priority"] == 8
        created = datetime.fromisoformat(queued["created_at"])
        start_by = datetime.fromisoformat(queued["start_by"])
        assert round((start_by - created).total_seconds(), 3) == 0.2
        assert (await run_of(api, patient["run_id"]))["start_by"] is None

        assert (await wait_status(api, patient["run_id"], "completed"))["status"] == "completed"
        ended = await run_of(api, late["run_id"])
        assert (ended["status"], ended["reason"], ended["started_at"]) == (
            "expired",
            "expired",
            None,
        )
        assert (await run_of(api, first["run_id"]))["status"] == "completed"
        outbox = SessionRef.of("default", "d").keys.outbox
        assert await redis.hexists(outbox, late["run_id"])  # its webhook is owed


async def test_the_sweeper_expires_a_run_waiting_behind_a_long_one(
    redis: Redis, redis_server: RedisServer
) -> None:
    async with app_client(redis_server.url, sweep_interval_seconds=0.2) as api:
        long = (await post(api, "e", "long", metadata={"delay_ms": 60_000}, expect=202)).json()
        late = (await post(api, "e", "soon", start_within_seconds=0.3, expect=202)).json()
        ended = await wait_status(api, late["run_id"], "expired")
        assert ended["error"] == "not started within its start_within_seconds"
        assert (await run_of(api, long["run_id"]))["status"] == "running"
        await api.post("/v1/sessions/e/stop")


async def test_priority_and_deadline_are_checked_and_kept_on_tasks(
    redis: Redis, redis_server: RedisServer
) -> None:
    async with app_client(redis_server.url, internal_secret=INTERNAL_SECRET) as api:
        for bad in ({"priority": 10}, {"priority": -1}, {"start_within_seconds": 0}):
            response = await post(api, "v", "x", **bad)
            assert response.status_code == 422, bad
        task = {"agent_id": "echo", "execution_id": "x-1", "message": "hi", "priority": 2}
        response = await api.post(
            "/internal/execute-task",
            params={"wait": 5},
            headers=INTERNAL,
            json=task | {"start_within_seconds": 30},
        )
        assert response.status_code == 200, response.text
        run = response.json()
        assert (run["status"], run["priority"]) == ("completed", 2)
        assert run["start_by"] is not None
        default = (await post(api, "v", "plain", wait=5, expect=200)).json()
        assert (default["priority"], default["start_by"]) == (5, None)
