"""What a caller waiting for a run is told when the run failed for want of a subscription
(`subscriptions_exhausted`): `Retry-After`, the seconds until the agent's first cooling
subscription comes back, counted from now (none while every one is disabled)."""

from __future__ import annotations

import math
from typing import Any

from app.errors import SubscriptionsExhaustedError
from app.subscriptions.switcher import Subscriptions


async def retry_after(subscriptions: Subscriptions, run: dict[str, Any]) -> dict[str, str]:
    """The `Retry-After` header for an ended run (as the API shows it), or no header."""
    error = run.get("error") or ""
    if run.get("status") != "failed" or not error.startswith(
        f"{SubscriptionsExhaustedError.code}:"
    ):
        return {}
    back_in = await subscriptions.back_in(run.get("agent_id") or "")
    return {} if back_in is None else {"Retry-After": str(max(1, math.ceil(back_in)))}
