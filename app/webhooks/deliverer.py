"""Sends the completion webhooks every session owes, from any worker.

Every worker runs a deliverer; one at a time (a short lease) walks the index of sessions
that may owe webhooks, claims what is due in each and sends it. A delivery is POSTed as
`{"type": "run.<status>", "timestamp": ..., "data": <the run as GET /v1/runs/{id}>}` and
signed the Standard Webhooks way: `webhook-id` is the run id (the same on every retry),
`webhook-timestamp`, and `webhook-signature` made with the `standardwebhooks` library.

2xx delivers; 4xx other than 408 and 429 gives up at once (the receiver refused it); any
other answer, a timeout or a connection error is tried again after a backoff that doubles
from LEASEGATE_WEBHOOK_RETRY_BASE_SECONDS (capped at 6 hours), until
LEASEGATE_WEBHOOK_MAX_ATTEMPTS; then the delivery is kept as `dead`, listed at
`GET /internal/webhooks?status=dead` and can be delivered again on request.

Subscription-switch notices (LEASEGATE_WEBHOOK_URL) go the same way from each agent's
outbox (`notices`): the body is the switch event itself, `webhook-id` is
`<agent>/<event id>`, signed when LEASEGATE_WEBHOOK_SECRET is set; a dead one stays in its
agent's outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, cast

import httpx
from redis.asyncio import Redis
from standardwebhooks import Webhook

from app.errors import InvalidKeyError, LeasegateError
from app.keys import WEBHOOK_SESSIONS
from app.locks import LeaseManager
from app.redis import as_text, guarded
from app.sessions.index import SessionIndex
from app.sessions.ref import SessionRef
from app.tasks import cancel_and_wait
from app.webhooks.notices import Notice, Notices
from app.webhooks.outbox import Delivery, Outbox

if TYPE_CHECKING:
    from app.settings import Settings
    from app.subscriptions.webhook import Webhook as SwitchWebhook

log = logging.getLogger(__name__)

LEASE = "webhooks"
PAGE = 500
CLAIM_MARGIN = 5.0
PER_SESSION = 50
CONCURRENCY = 32
MAX_BACKOFF = 6 * 3600.0
IDLE_GRACE_MS = 60_000


class Deliverer:
    def __init__(
        self,
        redis: Redis,
        outbox: Outbox,
        index: SessionIndex,
        leases: LeaseManager,
        *,
        secret: str | None,
        interval: float,
        timeout: float,
        max_attempts: int,
        retry_base: float,
        notices: Notices | None = None,
        switch_url: str | None = None,
    ) -> None:
        self._redis = redis
        self._outbox = outbox
        self._index = index
        self._leases = leases
        self._signer = Webhook(secret) if secret else None
        self._interval = interval
        self._max_attempts = max_attempts
        self._retry_base = retry_base
        self._notices = notices if switch_url else None
        self._switch_url = switch_url
        self._http = httpx.AsyncClient(timeout=timeout, follow_redirects=False)
        # A claim outlasts one attempt: a sender that dies mid-attempt leaves the delivery
        # to be claimed again once it ends.
        self._claim_ms = round((timeout + CLAIM_MARGIN) * 1000)
        self._sending = asyncio.Semaphore(CONCURRENCY)
        self._soon = asyncio.Event()
        self._started = False
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def prepare(self) -> None:
        """Before serving: set the switch notices' cursors that are missing (a failure
        here is tried again by the first pass)."""
        if self._notices is None:
            return
        try:
            await self._notices.start()
            self._started = True
        except LeasegateError as exc:
            log.warning("webhooks: switch notices not prepared yet: %s", exc)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="webhook-deliverer")

    def soon(self) -> None:
        """Make a pass now (a switch was just made), not at the end of the interval."""
        self._soon.set()

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            await cancel_and_wait(self._task)
        await self._http.aclose()

    async def _loop(self) -> None:
        while not self._closed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval * random.uniform(0.9, 1.0)):
                    await self._soon.wait()
            self._soon.clear()
            try:
                if not self._started and self._notices is not None:
                    await self._notices.start()
                self._started = True
                await self.deliver_due()
            except LeasegateError as exc:
                log.warning("webhooks: %s", exc)
            except Exception:
                log.exception("webhooks: unexpected failure")

    async def deliver_due(self) -> int:
        """One pass, if no other worker made one within the interval; deliveries sent."""
        if await self._leases.acquire(LEASE, ttl=self._interval * 0.8) is None:
            return 0
        sent = await self._deliver_notices()
        offset = 0
        while True:
            entries = cast(
                list[tuple[bytes, float]],
                await guarded(
                    self._redis.zrange(WEBHOOK_SESSIONS, offset, offset + PAGE - 1, withscores=True)
                ),
            )
            idle = []
            for member, score in entries:
                session = _session(as_text(member))
                if session is None:
                    continue
                claimed = await self._outbox.claim(session, _now_ms(), self._claim_ms, PER_SESSION)
                await asyncio.gather(*(self._send(session, d) for d in claimed.deliveries))
                sent += len(claimed.deliveries)
                if not claimed.busy and score < _now_ms() - IDLE_GRACE_MS:
                    idle.append((session, score))
            await self._index.forget(idle, index=WEBHOOK_SESSIONS)
            if len(entries) < PAGE:
                return sent
            offset += PAGE

    async def _deliver_notices(self) -> int:
        """Send the switch notices every agent owes (LEASEGATE_WEBHOOK_URL)."""
        if self._notices is None or self._switch_url is None:
            return 0
        sent = 0
        for agent_id in self._notices.agent_ids:
            claimed = await self._notices.claim(agent_id, _now_ms(), self._claim_ms, PER_SESSION)
            await asyncio.gather(*(self._send_notice(n) for n in claimed))
            sent += len(claimed)
        return sent

    async def _send_notice(self, notice: Notice) -> None:
        assert self._notices is not None and self._switch_url is not None
        body = json.dumps(notice.payload)
        status, error = await self._post(self._switch_url, notice.webhook_id, body)
        outcome, retry_at = self._outcome(status, notice.attempts)
        if outcome == "dead":
            log.warning(
                "switch webhook %s given up after %d attempt(s): %s",
                notice.webhook_id,
                notice.attempts,
                error,
            )
        await self._notices.settle(notice, outcome, retry_at_ms=retry_at, error=error)

    async def _send(self, session: SessionRef, delivery: Delivery) -> None:
        run = delivery.run
        body = json.dumps(
            {
                "type": f"run.{run.status.value}",
                "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "data": run.public(),
            }
        )
        status, error = await self._post(delivery.url, run.run_id, body)
        outcome, retry_at = self._outcome(status, delivery.attempts)
        if outcome == "dead":
            log.warning(
                "webhook for run %s given up after %d attempt(s): %s",
                run.run_id,
                delivery.attempts,
                error,
            )
            await self._outbox.settle(session, delivery, "dead", error=error)
            await self._outbox.mark_dead(run.run_id, _now_ms())
            return
        await self._outbox.settle(session, delivery, outcome, retry_at_ms=retry_at, error=error)

    async def _post(self, url: str, webhook_id: str, body: str) -> tuple[int, str]:
        """POST `body`, signed when a secret is configured: (HTTP status or 0, what went
        wrong, never the URL: it may hold credentials)."""
        headers = {"content-type": "application/json", "webhook-id": webhook_id}
        if self._signer is not None:
            stamp = datetime.now(UTC)
            headers["webhook-timestamp"] = str(int(stamp.timestamp()))
            headers["webhook-signature"] = self._signer.sign(webhook_id, stamp, body)
        async with self._sending:
            try:
                response = await self._http.post(url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                return 0, type(exc).__name__
        return response.status_code, f"HTTP {response.status_code}"

    def _outcome(self, status: int, attempts: int) -> tuple[str, int]:
        """delivered, dead or retry (with when, in ms) for an attempt that got `status`."""
        if 200 <= status < 300:
            return "delivered", 0
        if (400 <= status < 500 and status not in (408, 429)) or attempts >= self._max_attempts:
            return "dead", 0
        backoff = min(self._retry_base * 2 ** (attempts - 1), MAX_BACKOFF)
        return "retry", _now_ms() + round(backoff * 1000)


async def open_deliverer(
    redis: Redis,
    settings: Settings,
    outbox: Outbox,
    index: SessionIndex,
    leases: LeaseManager,
    *,
    notices: Notices,
    webhook: SwitchWebhook | None,
) -> Deliverer | None:
    """The worker's deliverer, prepared (not started), and told of by the switch webhook;
    None when there is nothing it could sign or send to (no webhook secret, no switch URL)."""
    if settings.webhook_secret is None and webhook is None:
        return None
    signing = settings.webhook_secret
    deliverer = Deliverer(
        redis,
        outbox,
        index,
        leases,
        secret=signing.get_secret_value() if signing else None,
        interval=settings.webhook_interval_seconds,
        timeout=settings.webhook_timeout_seconds,
        max_attempts=settings.webhook_max_attempts,
        retry_base=settings.webhook_retry_base_seconds,
        notices=notices,
        switch_url=webhook.url if webhook else None,
    )
    if webhook is not None:
        webhook.attach(deliverer.soon)
    await deliverer.prepare()
    return deliverer


def _session(member: str) -> SessionRef | None:
    tenant, _, session_id = member.partition("/")
    try:
        return SessionRef.of(tenant, session_id)
    except InvalidKeyError:
        return None


def _now_ms() -> int:
    return round(time.time() * 1000)
