"""Nothing accepted is lost and no session is stuck: SIGKILL, SIGTERM, Redis going away."""

from __future__ import annotations

import asyncio
import functools
import signal
import time
import uuid
from pathlib import Path

import pytest
from redis.asyncio import Redis

from app.metrics import Metrics
from app.redis.server import RedisServer
from tests.support.api import app_client, post, run_of, status_is
from tests.support.servers import single_process_servers
from tests.support.waiting import start_confirmed, wait_until


@pytest.mark.multiprocess
async def test_a_killed_holders_sessions_are_taken_over_within_ttl_plus_one_sweep(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Default settings: lease TTL 10 s, sweep every 5 s, so at most 15 s."""
    with single_process_servers(redis_server.url, tmp_path, 2) as [(victim, process), (rescuer, _)]:
        prefix = uuid.uuid4().hex[:8]
        in_flight, queued = [], []
        for i in range(5):
            session = f"{prefix}-{i}"
            long = await post(victim, session, "long", metadata={"delay_ms": 600_000}, expect=202)
            in_flight.append(long.json()["run_id"])
            queued.append((await post(victim, session, f"next {i}", expect=202)).json()["run_id"])
        probe = Redis.from_url(redis_server.url)
        for i, run_id in enumerate(in_flight):
            await wait_until(functools.partial(status_is, rescuer, run_id, "running"), what="run")
            confirmed = functools.partial(
                start_confirmed, probe, "default", f"{prefix}-{i}", run_id
            )
            await wait_until(confirmed, what="its start confirmed")  # else it would run again
        await probe.aclose()
        process.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        process.wait(10)
        for run_id in queued:
            await wait_until(
                functools.partial(status_is, rescuer, run_id, "completed"),
                20,
                "the queued run to be drained by another worker",
            )
        recovered_after = time.monotonic() - killed_at
        print(f"recovered {len(queued)} sessions {recovered_after:.1f} s after SIGKILL")
        # The documented bound, not a speed: the lease expires (10 s TTL) and the next sweep
        # (every 5 s) takes the session over; 1 s for the drain itself.
        assert recovered_after <= 15 + 1
        for run_id in in_flight:
            run = await run_of(rescuer, run_id)
            assert run["status"] == "lost" and "lease" in run["error"]
        again = (await post(rescuer, f"{prefix}-0", "still works", expect=202)).json()
        await wait_until(lambda: status_is(rescuer, again["run_id"], "completed"), what="next run")


@pytest.mark.multiprocess
async def test_sigterm_lets_runs_finish_and_hands_queued_runs_over_at_once(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    env = {"LEASEGATE_SHUTDOWN_GRACE_SECONDS": "5"}
    with single_process_servers(redis_server.url, tmp_path, 2, **env) as [
        (leaving, process),
        (staying, _),
    ]:
        session = f"term-{uuid.uuid4().hex[:8]}"
        finishing = (
            await post(leaving, session, "almost done", metadata={"delay_ms": 1500}, expect=202)
        ).json()
        queued = [
            (await post(leaving, session, f"q{i}", expect=202)).json()["run_id"] for i in range(3)
        ]
        await wait_until(lambda: status_is(staying, finishing["run_id"], "running"), what="run")
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM
        left_at = time.monotonic()
        for run_id in queued:
            await wait_until(
                functools.partial(status_is, staying, run_id, "completed"),
                5,
                "the queued runs to move to the other worker",
            )
        handed_over_after = time.monotonic() - left_at
        print(f"queued runs handed over {handed_over_after * 1000:.0f} ms after the exit")
        assert handed_over_after < 3  # far below the 10 s lease TTL: a wake-up, not an expiry
        assert (await run_of(staying, finishing["run_id"]))["status"] == "completed"


@pytest.mark.multiprocess
async def test_sigterm_interrupts_what_outlives_the_grace_period(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    env = {"LEASEGATE_SHUTDOWN_GRACE_SECONDS": "0.5"}
    with single_process_servers(redis_server.url, tmp_path, 2, **env) as [
        (leaving, process),
        (staying, _),
    ]:
        session = f"term-{uuid.uuid4().hex[:8]}"
        long = (
            await post(leaving, session, "long", metadata={"delay_ms": 600_000}, expect=202)
        ).json()
        after = (await post(leaving, session, "after", expect=202)).json()
        await wait_until(lambda: status_is(staying, long["run_id"], "running"), what="run")
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM
        assert (await run_of(staying, long["run_id"]))["status"] == "interrupted"
        await wait_until(lambda: status_is(staying, after["run_id"], "completed"), 5, "handover")


async def test_redis_going_away_stops_the_run_before_its_ttl_and_all_resumes(
    own_redis_server: RedisServer,
) -> None:
    metrics = Metrics()
    ttl = 1.5
    async with app_client(
        own_redis_server.url,
        metrics=metrics,
        lease_ttl_seconds=ttl,
        redis_timeout_seconds=0.3,
        sweep_interval_seconds=0.5,
    ) as api:
        slow = {"text": "long", "metadata": {"delay_ms": 600_000}}
        run = (await api.post("/v1/sessions/s/messages", json=slow)).json()
        probe = Redis.from_url(own_redis_server.url)
        confirmed = functools.partial(start_confirmed, probe, "default", "s", run["run_id"])
        await wait_until(confirmed, what="its start confirmed")  # else it would run again
        await probe.aclose()
        own_redis_server.stop()
        stopped_at = time.monotonic()

        async def run_stopped() -> bool:
            lost = metrics.registry.get_sample_value(
                "leasegate_lease_losses_total", {"reason": "unreachable"}
            )
            return bool(lost)

        await wait_until(run_stopped, 10, "the run to be stopped (fail closed)")
        assert time.monotonic() - stopped_at < ttl  # before another worker could take it
        refused = await api.post("/v1/sessions/s/messages", json={"text": "during"})
        assert refused.status_code == 503 and "retry-after" in refused.headers
        own_redis_server.start()  # same data (append-only file)
        after = await api.post(
            "/v1/sessions/s/messages", params={"wait": 10}, json={"text": "after"}
        )
        assert after.status_code == 200 and after.json()["status"] == "completed"
        old = (await api.get(f"/v1/runs/{run['run_id']}")).json()
        assert old["status"] == "lost"


async def test_the_sweeper_forgets_idle_sessions_and_keeps_busy_ones(
    redis: Redis, redis_server: RedisServer
) -> None:
    async with app_client(
        redis_server.url, lease_ttl_seconds=1.0, sweep_interval_seconds=60
    ) as api:
        await api.post("/v1/sessions/idle/messages", params={"wait": 5}, json={"text": "x"})
        await api.post(
            "/v1/sessions/busy/messages", json={"text": "x", "metadata": {"delay_ms": 600_000}}
        )
        assert await redis.zcard("lg:sessions:active") == 2
        sweeper = api.resources.sweeper

        async def idle_forgotten() -> bool:
            await redis.delete("lg:{sweeper}:lease")  # let this sweep run now
            await sweeper.sweep()
            members = await redis.zrange("lg:sessions:active", 0, -1)
            return members == [b"default/busy"]

        await wait_until(idle_forgotten, 10, "the idle session to leave the index")
        await asyncio.sleep(0)
