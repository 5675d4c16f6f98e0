"""The switch webhook (LEASEGATE_WEBHOOK_URL), as the switcher sees it.

A switch's notice is owed by the script that makes the switch: its `subscription_switched`
entry in the agent's event stream, written in the same step. The webhook deliverer of any
worker moves it into the agent's outbox and sends it, retried with backoff and signed like
completion webhooks (`app/webhooks/notices.py`), so a worker that dies right after a switch
loses no notice. `send` only asks this worker's deliverer to make a pass now.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Webhook:
    def __init__(self, url: str) -> None:
        self.url = url
        self._soon: Callable[[], None] | None = None

    def attach(self, soon: Callable[[], None]) -> None:
        """Who makes a delivery pass on request (the worker's deliverer)."""
        self._soon = soon

    def send(self, event: dict[str, Any]) -> None:
        """A switch was made (its notice is owed already): deliver soon."""
        if self._soon is not None:
            self._soon()

    async def aclose(self) -> None:
        """Nothing to close: deliveries belong to the deliverer."""
