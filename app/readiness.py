"""Saying "leasegate ready" once it is: when Redis answers and the scripts are loaded, not
when the process merely listens (a worker serves /readyz with 503 meanwhile)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("app.main")

FIRST_RETRY = 0.1
LAST_RETRY = 2.0


async def announce_when_ready(check: Callable[[], Awaitable[object]], message: str) -> None:
    """Run `check` until it passes (backing off up to LAST_RETRY seconds between tries),
    then log `message`. A failure is a warning, which the outage log thins out."""
    delay = FIRST_RETRY
    while True:
        try:
            await check()
        except Exception as exc:  # unreachable Redis, or anything readiness would refuse
            log.warning("not ready yet: %s", exc)
        else:
            log.info("%s", message)
            return
        await asyncio.sleep(delay)
        delay = min(LAST_RETRY, delay * 2)
