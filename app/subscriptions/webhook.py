"""One POST per subscription switch to the configured webhook, with a bounded retry.

Sent in the background, after the switch lease is released, so a slow receiver never holds
the lease or a run. The Redis event stream is the record; the webhook is a courtesy that
may be lost if the worker dies before sending it. The URL may carry a token, so it is
never logged.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx

log = logging.getLogger(__name__)

ATTEMPTS = 3
BACKOFF = 0.5
TIMEOUT = 5.0


class Webhook:
    def __init__(self, url: str, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._url = url
        self._client = httpx.AsyncClient(timeout=TIMEOUT, transport=transport)
        self._pending: set[asyncio.Task[None]] = set()

    def send(self, event: dict[str, Any]) -> None:
        task = asyncio.create_task(self._post(event))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _post(self, event: dict[str, Any]) -> None:
        for attempt in range(ATTEMPTS):
            try:
                response = await self._client.post(self._url, json=event)
                if response.status_code < 500:
                    if response.status_code >= 400:
                        log.warning(
                            "webhook refused event %s: HTTP %d", event["type"], response.status_code
                        )
                    return
            except httpx.HTTPError as exc:
                log.warning("webhook attempt %d failed: %s", attempt + 1, type(exc).__name__)
            await asyncio.sleep(BACKOFF * 2**attempt)
        log.error(
            "webhook: event %s for agent %s not delivered after %d attempts",
            event["type"],
            event.get("agent_id"),
            ATTEMPTS,
        )

    async def aclose(self, grace: float = 5.0) -> None:
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=grace)
        for task in list(self._pending):
            task.cancel()
        await self._client.aclose()
