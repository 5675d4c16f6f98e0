"""Metrics (Prometheus text, summed over workers) and structured JSON logs."""

from __future__ import annotations

import asyncio
import collections
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from app.logs import JsonFormatter
from app.redis.server import RedisServer, free_port
from tests.support.api import app_client, post, wait_status
from tests.support.servers import base_env, leasegate_command, server_process


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield stream
    finally:
        root.removeHandler(handler)


async def test_metrics_count_admissions_runs_and_leases(
    redis: Redis, redis_server: RedisServer
) -> None:
    async with app_client(redis_server.url) as api:
        await api.post("/v1/sessions/s/messages", params={"wait": 5}, json={"text": "a"})
        await api.post(
            "/v1/sessions/s/messages",
            params={"wait": 5},
            json={"text": "b", "metadata": {"fail": "error"}},
        )
        response = await api.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    found = samples(response.text)
    assert found[("leasegate_admissions_total", (("outcome", "started"),))] == 2
    assert found[("leasegate_runs_finished_total", (("status", "completed"),))] == 1
    assert found[("leasegate_runs_finished_total", (("status", "failed"),))] == 1
    assert found[("leasegate_run_duration_seconds_count", (("status", "completed"),))] == 1
    assert found[("leasegate_queue_depth_count", ())] == 2
    for name in [
        "leasegate_stale_fence_writes_refused_total",
        "leasegate_sweeper_recoveries_total",
        "leasegate_redis_errors_total",
    ]:
        assert (name, ()) in found


async def test_logs_are_json_lines_with_request_tenant_session_run_and_fence(
    redis: Redis, redis_server: RedisServer, json_lines: io.StringIO
) -> None:
    # Admission decisions are logged at DEBUG (the access log and a counter say it at INFO).
    async with app_client(redis_server.url, log_level="DEBUG", shutdown_grace_seconds=0.1) as api:
        response = await api.post(
            "/v1/sessions/chat-7/messages",
            params={"wait": 5},
            json={"text": "x", "metadata": {"fail": "error"}},
            headers={"X-Request-ID": "req-123"},
        )
        busy = await api.post(
            "/v1/sessions/chat-7/messages", json={"text": "y", "metadata": {"delay_ms": 60_000}}
        )
        refused = await api.post(
            "/v1/sessions/chat-7/messages", json={"text": "z", "busy_policy": "reject"}
        )
    assert response.headers["x-request-id"] == "req-123"
    assert busy.status_code == 202 and refused.status_code == 409
    lines = [json.loads(line) for line in json_lines.getvalue().splitlines()]
    admitted = next(entry for entry in lines if entry["msg"].startswith("admission started"))
    assert admitted["request_id"] == "req-123"
    assert admitted["tenant"] == "default" and admitted["session"] == "chat-7"
    assert admitted["worker"]
    failed = next(
        entry for entry in lines if entry["msg"].startswith("run ") and "failed" in entry["msg"]
    )
    assert failed["run"] == response.json()["run_id"] and failed["fence"] == 1
    assert any(entry["msg"].startswith("admission rejected") for entry in lines)


@pytest.mark.multiprocess
async def test_metrics_of_every_worker_appear_in_one_scrape(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = base_env(LEASEGATE_DATA_DIR=str(tmp_path / "data"), LEASEGATE_LOG_LEVEL="WARNING")
    command = leasegate_command("serve", "--port", str(port), "--workers", "2")
    with server_process(command, env, tmp_path / "serve.log", url):
        posted = await asyncio.gather(
            *(post(url, f"m{i}", "x", expect=202) for i in range(40))  # a connection each
        )
        runs = [await wait_status(url, p.json()["run_id"], "completed") for p in posted]
        # Each run was admitted and run by the worker that took its connection: several
        # workers each counted some of the 40 admissions...
        per_worker = collections.Counter(run["worker"] for run in runs)
        assert len(per_worker) >= 2, per_worker
        for _ in range(6):
            async with httpx.AsyncClient(base_url=url) as http:
                scrape = (await http.get("/metrics")).text
            found = samples(scrape)
            # ...and whichever worker answers the scrape reports all 40: the sum of them all.
            assert found[("leasegate_admissions_total", (("outcome", "started"),))] == 40
