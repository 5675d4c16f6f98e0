"""Completion webhooks: owed in the script that ends the run, signed, retried, given up on
4xx, kept as dead and delivered again on request; a worker killed before delivering
loses nothing."""

from __future__ import annotations

import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from app.redis.server import free_port
from app.sessions.ref import SessionRef
from tests.support.api import AppClient, app_client, post, wait_status
from tests.support.receiver import SECRET, Receiver, running_receiver
from tests.support.servers import single_process_servers
from tests.support.targets import RedisTarget
from tests.support.waiting import wait_until

INTERNAL = {"X-Internal-Secret": "internal-secret-0001"}


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with running_receiver() as running:
        yield running


def webhook_settings(**overrides: Any) -> dict[str, Any]:
    return {
        "webhook_secret": SECRET,
        "webhook_allowed_hosts": ["127.0.0.1"],
        "webhook_retry_base_seconds": 0.05,
        "webhook_interval_seconds": 0.05,
        "webhook_timeout_seconds": 1.0,
        "internal_secret": INTERNAL["X-Internal-Secret"],
        "lease_ttl_seconds": 2.0,
        **overrides,
    }


@pytest.fixture
async def api(redis_target: RedisTarget, target_redis: object) -> AsyncIterator[AppClient]:
    """An app on each Redis topology in turn: one server, then the cluster."""
    async with app_client(redis_target.url, **webhook_settings()) as http:
        yield http


async def received(receiver: Receiver, count: int) -> None:
    async def enough() -> bool:
        return len(receiver.received) >= count

    await wait_until(enough, 10, f"{count} webhook(s)")


async def test_a_run_that_ends_is_posted_once_signed(api: AppClient, receiver: Receiver) -> None:
    run = (await post(api, "s", "hello", wait=5, webhook=receiver.url)).json()
    await received(receiver, 1)
    [hook] = receiver.received
    assert hook.verified and hook.webhook_id == run["run_id"]
    assert hook.body["type"] == "run.completed" and hook.body["data"]["output"] == "echo: hello"
    assert hook.body["data"]["run_id"] == run["run_id"]
    await (await post(api, "s", "after", wait=5)).aread()  # no webhook asked: none sent
    assert len(receiver.received) == 1


async def test_failures_are_retried_with_the_same_id_until_delivered(
    api: AppClient, receiver: Receiver
) -> None:
    receiver.answers = [500, 503, 429]
    run = (await post(api, "s", "retry me", wait=5, webhook=receiver.url)).json()
    await received(receiver, 4)
    assert [h.webhook_id for h in receiver.received] == [run["run_id"]] * 4
    assert all(h.verified for h in receiver.received)
    assert (await api.get("/internal/webhooks", headers=INTERNAL)).json()["webhooks"] == []


async def test_a_refusal_is_not_retried_and_can_be_delivered_again(
    api: AppClient, receiver: Receiver
) -> None:
    receiver.answers = [410]
    run = (await post(api, "s", "gone", wait=5, webhook=receiver.url)).json()

    async def listed() -> bool:
        dead = (await api.get("/internal/webhooks", headers=INTERNAL)).json()["webhooks"]
        return [d["run_id"] for d in dead] == [run["run_id"]]

    await wait_until(listed, 10, "the delivery to be listed as dead")
    assert len(receiver.received) == 1
    again = await api.post(f"/internal/webhooks/{run['run_id']}/redeliver", headers=INTERNAL)
    assert again.status_code == 200
    await received(receiver, 2)
    assert receiver.received[1].webhook_id == run["run_id"]
    assert (await api.get("/internal/webhooks", headers=INTERNAL)).json()["webhooks"] == []


async def test_every_terminal_status_is_posted(
    redis_target: RedisTarget, target_redis: object, receiver: Receiver
) -> None:
    """LEASEGATE_RUN_WEBHOOK_URL: every run, however it ends (here cancelled while queued,
    and stopped while running)."""
    settings = webhook_settings(run_webhook_url=receiver.url)
    async with app_client(redis_target.url, **settings) as api:
        active = (await post(api, "s", "long", metadata={"delay_ms": 60_000})).json()
        queued = (await post(api, "s", "queued")).json()
        await api.post("/v1/sessions/s/stop")
        await wait_status(api, active["run_id"], "cancelled")
        await received(receiver, 2)
    kinds = {h.webhook_id: h.body["type"] for h in receiver.received}
    assert kinds == {active["run_id"]: "run.cancelled", queued["run_id"]: "run.cancelled"}


async def test_a_url_the_service_may_not_call_is_refused_and_changes_nothing(
    api: AppClient,
) -> None:
    for url in ("http://10.0.0.1/hook", "ftp://127.0.0.1/x", "not a url"):
        response = await post(api, "s", "x", webhook=url)
        assert response.status_code == 422 and response.json()["status"] == 422
        assert url not in response.text
    assert (await api.get("/v1/sessions/s")).status_code == 404


@pytest.mark.multiprocess
async def test_a_worker_killed_before_delivering_loses_nothing(
    redis_target: RedisTarget, target_redis: Redis, tmp_path: Path
) -> None:
    port = free_port()  # nothing listens there yet: every attempt fails until it does
    url = f"http://127.0.0.1:{port}/hook"
    env = {
        "LEASEGATE_WEBHOOK_SECRET": SECRET,
        "LEASEGATE_RUN_WEBHOOK_URL": url,
        "LEASEGATE_WEBHOOK_RETRY_BASE_SECONDS": "0.2",
        "LEASEGATE_WEBHOOK_INTERVAL_SECONDS": "0.1",
        "LEASEGATE_WEBHOOK_TIMEOUT_SECONDS": "1",
    }
    session = f"wh-{uuid.uuid4().hex[:8]}"
    with single_process_servers(redis_target.url, tmp_path, 1, **env) as [(first, process)]:
        runs = [(await post(first, session, f"m{i}", wait=5)).json()["run_id"] for i in range(3)]
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    (tmp_path / "b").mkdir()
    probe = target_redis
    outbox = SessionRef.of("default", session).keys.outbox

    async def settled() -> bool:
        return await probe.hlen(outbox) == 0

    async with running_receiver(port) as receiver:
        with single_process_servers(redis_target.url, tmp_path / "b", 1, **env):
            await received(receiver, 3)
            await wait_until(settled, 10, "every delivery settled")  # nothing more to send
    assert sorted(h.webhook_id for h in receiver.received) == sorted(runs)  # once each
    assert all(h.verified for h in receiver.received)
