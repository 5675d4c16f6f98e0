"""The built-in `echo` agent: replies `echo: <text>` in a few deltas.

`metadata.delay_ms` stretches the reply over that long (capped at 10 minutes): one timer
per delta, so thousands of slow runs in flight cost next to nothing while they wait;
`metadata.fail = "error"` makes it raise after the delay.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from app.agents.base import AgentRequest
from app.errors import AgentFailedError, SubscriptionFailureError

MAX_DELAY_MS = 600_000
DELTAS = 3


class EchoAgent:
    """`metadata.exhausted_subscriptions: [ids]` makes a run on one of those subscriptions
    fail as the upstream would when it refuses a subscription (rate limit)."""

    async def stream(self, request: AgentRequest) -> AsyncIterator[str]:
        exhausted = request.metadata.get("exhausted_subscriptions") or []
        if request.subscription is not None and request.subscription.id in exhausted:
            raise SubscriptionFailureError("rate_limit", request.subscription.id, "simulated")
        reply = f"echo: {request.text}"
        delay = _delay_seconds(request.metadata.get("delay_ms"))
        size = max(1, -(-len(reply) // DELTAS))
        for start in range(0, len(reply), size):
            if delay:
                await asyncio.sleep(delay / DELTAS)
            yield reply[start : start + size]
        if request.metadata.get("fail") == "error":
            raise AgentFailedError("echo agent failed on request (metadata.fail)")

    async def aclose(self) -> None:
        """Nothing to close."""


def _delay_seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return 0.0
    return min(float(value), MAX_DELAY_MS) / 1000
