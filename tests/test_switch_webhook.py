"""Subscription-switch webhooks go through an outbox: owed by the switch's own script (its
event), sent by any worker's deliverer, retried, signed, and never lost when the worker
that switched dies."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from redis.asyncio import Redis

from app.keys import agent_keys
from app.redis.server import RedisServer, free_port
from app.webhooks import notices
from tests.support.api import app_client
from tests.support.faultproxy import FaultProxy, evalsha_of
from tests.support.receiver import SECRET, Receiver, running_receiver
from tests.support.servers import (
    INTERNAL,
    agents_settings,
    base_env,
    server_process,
    uvicorn_command,
    write_agents_file,
)
from tests.support.waiting import wait_until

SWITCH = {
    "type": "subscription_switched",
    "agent_id": "helper",
    "from": "sub-a",
    "to": "sub-b",
    "reason": "auto",
    "kind": "rate_limit",
}


async def refuse(http: httpx.AsyncClient, subscription: str = "sub-a") -> dict[str, Any]:
    response = await http.post(
        "/internal/agents/helper/subscription-failures",
        json={"subscription_id": subscription, "kind": "rate_limit"},
    )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def settled(redis: Redis) -> bool:
    """Every notice of the agent is delivered (none owed any more)."""
    return await redis.hlen(agent_keys("helper").notices) == 0


async def switch_event_id(redis: Redis) -> str:
    entries = cast(
        list[tuple[bytes, dict[bytes, bytes]]], await redis.xrange(agent_keys("helper").events)
    )
    [event_id] = [i.decode() for i, f in entries if f[b"type"] == b"subscription_switched"]
    return event_id


async def test_a_notice_survives_the_worker_that_switched_being_killed(
    redis: Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    port = free_port()
    env = base_env(
        LEASEGATE_REDIS_URL=redis_server.url,
        LEASEGATE_AGENTS_FILE=str(write_agents_file(tmp_path)),
        LEASEGATE_INTERNAL_SECRET=INTERNAL["X-Internal-Secret"],
        LEASEGATE_WEBHOOK_URL=f"http://127.0.0.1:{port}/hook",
        LEASEGATE_WEBHOOK_SECRET=SECRET,
        LEASEGATE_WEBHOOK_RETRY_BASE_SECONDS="0.3",
        LEASEGATE_WEBHOOK_TIMEOUT_SECONDS="1",
        LEASEGATE_WEBHOOK_INTERVAL_SECONDS="0.2",
        LEASEGATE_LOG_LEVEL="WARNING",
    )
    first_port, second_port = free_port(), free_port()
    first_url, second_url = f"http://127.0.0.1:{first_port}", f"http://127.0.0.1:{second_port}"
    with server_process(uvicorn_command(first_port, 1), env, tmp_path / "1.log", first_url) as one:
        async with httpx.AsyncClient(base_url=first_url, headers=INTERNAL) as http:
            assert (await refuse(http))["switched"] is True
        one.kill()  # SIGKILL: the receiver is not up yet, so nothing was delivered
        one.wait()
    async with running_receiver(port) as receiver:
        with server_process(uvicorn_command(second_port, 1), env, tmp_path / "2.log", second_url):

            async def delivered() -> bool:
                return bool(receiver.received) and await settled(redis)

            await wait_until(delivered, 15, "the other server to deliver the notice")
    [notice] = receiver.received
    assert notice.verified and notice.body == SWITCH
    assert notice.webhook_id == f"helper/{await switch_event_id(redis)}"


async def test_a_failing_receiver_gets_the_notice_again_and_a_410_once(
    redis: Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    async with running_receiver() as receiver:
        receiver.answers = [503, 500]
        settings = agents_settings(tmp_path) | {
            "webhook_url": receiver.url,
            "webhook_secret": SECRET,
            "webhook_retry_base_seconds": 0.05,
            "webhook_interval_seconds": 0.05,
        }
        async with app_client(redis_server.url, headers=INTERNAL, **settings) as api:
            await refuse(api)
            await wait_until(lambda: _received(receiver, 3), 10, "three attempts")
            await wait_until(lambda: settled(redis), 5, "the notice settled")
            ids = {r.webhook_id for r in receiver.received}
            assert len(ids) == 1 and all(r.verified for r in receiver.received)
            assert [r.body for r in receiver.received] == [SWITCH] * 3

            receiver.answers = [410]
            manual = await api.put(
                "/internal/agents/helper/subscription", json={"subscription_id": "sub-a"}
            )
            assert manual.status_code == 200  # a second notice, refused for good

            async def dead() -> bool:
                raw = await redis.hvals(agent_keys("helper").notices)
                return [json.loads(v)["status"] for v in raw] == ["dead"]

            await wait_until(dead, 5, "the refused notice kept as dead")
        assert len(receiver.received) == 4  # no retry after the 410


async def dead_notices(http: httpx.AsyncClient) -> list[dict[str, Any]]:
    response = await http.get("/internal/webhooks")
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["notices"]
    return found


@pytest.mark.parametrize("broken", [False, True], ids=["script", "broken-variant"])
async def test_a_dead_notice_is_listed_and_delivered_again_on_request(
    redis: Redis,
    redis_server: RedisServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    broken: bool,
) -> None:
    """Through a proxy that loses the reply to the redelivery script once (redis-py sends
    it again): the answer is the first call's. Its broken variant, which owes only a dead
    notice again, answers the re-send 404 and is caught."""
    if broken:
        old = "local notice = cjson.decode(raw)\nnotice.status,"
        assert old in notices.REDELIVER
        new = "local notice = cjson.decode(raw)\nif notice.status ~= 'dead' then return 0 end\n"
        monkeypatch.setattr(
            notices, "REDELIVER", notices.REDELIVER.replace(old, new + "notice.status,")
        )
    async with (
        running_receiver() as receiver,
        FaultProxy("127.0.0.1", redis_server.port) as proxy,
    ):
        receiver.answers = [410]
        settings = agents_settings(tmp_path) | {
            "webhook_url": receiver.url,
            "webhook_secret": SECRET,
            "webhook_interval_seconds": 0.05,
        }
        async with app_client(proxy.url, headers=INTERNAL, **settings) as api:
            await refuse(api)
            await wait_until(lambda: _received(receiver, 1), 10, "the notice sent")

            async def listed() -> bool:
                return len(await dead_notices(api)) == 1

            await wait_until(listed, 5, "the refused notice listed as dead")
            [dead] = await dead_notices(api)
            event_id = await switch_event_id(redis)
            assert dead == {
                "agent_id": "helper",
                "notice_id": event_id,
                "webhook_id": f"helper/{event_id}",
                "attempts": 1,
                "last_error": dead["last_error"],
                "event": SWITCH,
            }
            assert "410" in dead["last_error"]
            assert (await api.get("/internal/webhooks")).json()["webhooks"] == []

            sha = hashlib.sha1(notices.REDELIVER.encode(), usedforsecurity=False).hexdigest()
            fault = proxy.drop_reply(evalsha_of(sha))
            again = await api.post(f"/internal/agents/helper/notices/{event_id}/redeliver")
            assert fault.count == 1  # the script ran, its reply was lost, it was sent again
            if broken:
                assert again.status_code == 404
                return
            assert again.status_code == 200, again.text
            assert again.json() == {
                "agent_id": "helper",
                "notice_id": event_id,
                "status": "pending",
            }
            await wait_until(lambda: settled(redis), 5, "the notice delivered")
            assert [r.webhook_id for r in receiver.received] == [f"helper/{event_id}"] * 2
            assert receiver.received[1].verified and receiver.received[1].body == SWITCH
            assert await dead_notices(api) == []
            for path in (
                f"/internal/agents/helper/notices/{event_id}/redeliver",  # delivered: gone
                "/internal/agents/helper/notices/0-1/redeliver",
                f"/internal/agents/no-such-agent/notices/{event_id}/redeliver",
            ):
                missing = await api.post(path)
                assert missing.status_code == 404
                assert missing.json()["type"] == "/problems/notice-not-found"


async def _received(receiver: Receiver, count: int) -> bool:
    return len(receiver.received) >= count
