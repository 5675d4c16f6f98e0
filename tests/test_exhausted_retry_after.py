"""A chat caller waiting for a run that failed for want of a subscription is told when to
try again: `Retry-After`, the seconds until the agent's first subscription comes back."""

from __future__ import annotations

from pathlib import Path

from redis.asyncio import Redis

from app.redis.server import RedisServer
from tests.support.api import app_client, post
from tests.support.servers import INTERNAL, agents_settings

EXHAUSTED = {"exhausted_subscriptions": ["sub-a", "sub-b"]}


async def test_a_wait_answer_for_an_exhausted_run_carries_retry_after(
    redis_server: RedisServer, redis: Redis, tmp_path: Path
) -> None:
    async with app_client(redis_server.url, headers=INTERNAL, **agents_settings(tmp_path)) as api:
        answer = await post(
            api, "s-1", "hi", agent_id="helper", metadata=EXHAUSTED, wait=10, expect=200
        )
        run = answer.json()
        assert run["status"] == "failed"
        assert run["error"].startswith("subscriptions_exhausted: ")
        # The echo's refusal names no wait: both rest the default 60 s.
        assert 55 <= int(answer.headers["retry-after"]) <= 60
        # Runs that complete, or fail for another reason, carry none.
        completed = await post(api, "s-2", "hi", agent_id="echo", wait=10, expect=200)
        assert completed.json()["status"] == "completed"
        assert "retry-after" not in completed.headers
        # With every subscription disabled there is no time to give.
        for sub in ("sub-a", "sub-b"):
            refused = await api.post(
                "/internal/agents/other/subscription-failures",
                json={"subscription_id": sub, "kind": "auth"},
            )
            assert refused.status_code == 200, refused.text
        disabled = await post(
            api, "s-3", "hi", agent_id="other", metadata=EXHAUSTED, wait=10, expect=200
        )
        assert disabled.json()["error"].startswith("subscriptions_exhausted: ")
        assert "all are disabled" in disabled.json()["error"]
        assert "retry-after" not in disabled.headers
