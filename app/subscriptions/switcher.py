"""One subscription switch per agent per burst of failures, across every worker.

On a refused subscription (rate limit, quota, auth):

1. the failure is recorded in the agent's failure window (outside any lock); a
   subscription with a failure in the window is no candidate, and switching never clears
   this history, so an agent cannot ping-pong between two exhausted subscriptions;
2. the assignment is read; if it is no longer the failed subscription, the failure is stale;
3. the agent's switch lease is taken (blocking, with a timeout) and the assignment read
   again: a change since step 2 means another worker switched already;
4. the first subscription in priority order that is neither the failed one nor in the
   window is assigned by a compare-and-set fenced by the lease's fence (an expired holder
   cannot overwrite a newer assignment), which also writes the one event of the switch;
   with no candidate, "no viable subscription" is recorded once;
5. outside the lease, the webhook (if any) gets one POST.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from redis.asyncio import Redis

from app.agents import AgentRegistry
from app.errors import LeaseTimeoutError, UnknownSubscriptionError
from app.keys import AgentKeys, agent_keys
from app.locks import Lease, LeaseManager
from app.metrics import Metrics
from app.redis import as_text, guarded
from app.subscriptions.scripts import AssignCode, SubscriptionScripts
from app.subscriptions.webhook import Webhook

log = logging.getLogger(__name__)

Reason = Literal["switched", "stale", "no_alternative", "assigned"]


@dataclass(frozen=True, slots=True)
class SwitchResult:
    switched: bool
    from_subscription: str
    to_subscription: str
    reason: Reason

    def public(self) -> dict[str, Any]:
        return {
            "switched": self.switched,
            "from": self.from_subscription,
            "to": self.to_subscription,
            "reason": self.reason,
        }


class Subscriptions:
    def __init__(
        self,
        redis: Redis,
        scripts: SubscriptionScripts,
        leases: LeaseManager,
        agents: AgentRegistry,
        metrics: Metrics,
        *,
        failure_window: float,
        switch_wait: float,
        switch_ttl: float,
        events_max_length: int,
        webhook: Webhook | None = None,
    ) -> None:
        self._redis = redis
        self._scripts = scripts
        self._leases = leases
        self._agents = agents
        self._metrics = metrics
        self._window_ms = round(failure_window * 1000)
        self._wait = switch_wait
        self._ttl = switch_ttl
        self._max_events = events_max_length
        self._webhook = webhook

    def priority(self, agent_id: str) -> tuple[str, ...]:
        return self._agents.subscriptions_of(agent_id)

    async def current(self, agent_id: str) -> str | None:
        """The subscription the agent uses now; None for an agent without subscriptions."""
        priority = self.priority(agent_id)
        if not priority:
            return None
        stored = await guarded(self._redis.hget(agent_keys(agent_id).assignment, "subscription"))
        return _effective(stored, priority)

    async def handle_failure(self, agent_id: str, failed: str, kind: str) -> SwitchResult:
        priority = self._known(agent_id, failed)
        keys = agent_keys(agent_id)
        await self._record_failure(keys, failed)
        _, snapshot, _ = await self._read(keys, priority)
        if snapshot != failed:
            return self._outcome(SwitchResult(False, failed, snapshot, "stale"))
        try:
            async with self._leases.hold(
                keys.lease.resource, timeout=self._wait, ttl=self._ttl
            ) as lease:
                result, event = await self._switch_held(lease, keys, priority, failed, kind)
        except LeaseTimeoutError:
            log.warning(
                "agent %s: switch lease not acquired within %gs; using the current subscription",
                agent_id,
                self._wait,
            )
            _, now, _ = await self._read(keys, priority)
            return self._outcome(SwitchResult(False, failed, now, "stale"))
        if event is not None and self._webhook is not None:
            self._webhook.send(event)
        return self._outcome(result)

    async def assign(self, agent_id: str, subscription: str) -> SwitchResult:
        """A manual assignment, serialized with automatic switches by the same lease."""
        priority = self._known(agent_id, subscription)
        keys = agent_keys(agent_id)
        async with self._leases.hold(
            keys.lease.resource, timeout=self._wait, ttl=self._ttl
        ) as lease:
            raw, current, _ = await self._read(keys, priority)
            if current == subscription:
                return SwitchResult(False, current, current, "assigned")
            code, *_ = await self._assign(lease, keys, raw, current, subscription, "manual", "")
        if code != AssignCode.ASSIGNED:
            raise RuntimeError(f"manual assignment of {agent_id!r} refused ({code!r})")
        event = self._event(agent_id, current, subscription, "manual", "")
        if self._webhook is not None:
            self._webhook.send(event)
        self._metrics.switches.labels("manual").inc()
        return SwitchResult(True, current, subscription, "assigned")

    async def state(self, agent_id: str) -> dict[str, Any]:
        priority = self.priority(agent_id)
        keys = agent_keys(agent_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.assignment)
            pipe.zrange(keys.failures, 0, -1, withscores=True)
            assignment, failures = await guarded(pipe.execute())
        fields = {as_text(k): as_text(v) for k, v in assignment.items()}
        now_ms = time.time() * 1000
        window = [
            {
                "subscription_id": as_text(sub),
                "failed_at": _iso_ms(score),
                "expires_at": _iso_ms(score + self._window_ms),
            }
            for sub, score in failures
            if score + self._window_ms > now_ms
        ]
        last = None
        if fields.get("last_at"):
            last = {
                "from": fields["last_from"],
                "to": fields["last_to"],
                "at": _iso_us(int(fields["last_at"])),
                "reason": fields["last_reason"],
            }
        return {
            "agent_id": agent_id,
            "subscription": _effective(fields.get("subscription"), priority) if priority else None,
            "subscriptions": list(priority),
            "failure_window": window,
            "switch_count": int(fields.get("switch_count") or 0),
            "last_switch": last,
        }

    async def events(self, agent_ids: list[str], limit: int) -> list[dict[str, Any]]:
        """The newest events of these agents, newest first."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for agent_id in agent_ids:
                pipe.xrevrange(agent_keys(agent_id).events, count=limit)
            streams = await guarded(pipe.execute())
        entries = [
            {"id": as_text(entry_id)} | {as_text(k): as_text(v) for k, v in fields.items()}
            for stream in streams
            for entry_id, fields in stream
        ]
        entries.sort(key=lambda e: tuple(int(p) for p in e["id"].split("-")), reverse=True)
        return entries[:limit]

    async def _switch_held(
        self, lease: Lease, keys: AgentKeys, priority: tuple[str, ...], failed: str, kind: str
    ) -> tuple[SwitchResult, dict[str, Any] | None]:
        agent_id = keys.lease.resource.removeprefix("a:")
        raw, current, recent = await self._read(keys, priority)
        if current != failed:
            return SwitchResult(False, failed, current, "stale"), None
        candidate = next((s for s in priority if s != failed and s not in recent), None)
        if candidate is None:
            recorded = await guarded(
                self._scripts.no_viable(
                    keys=[keys.lease.lease, keys.lease.fence, keys.assignment, keys.events],
                    args=[lease.token, lease.fence, raw, kind, agent_id, self._max_events, current],
                )
            )
            if recorded[0] == 1:
                log.error(
                    "agent %s: no viable subscription after %s failed (%s)", agent_id, failed, kind
                )
            return SwitchResult(False, failed, failed, "no_alternative"), None
        code, *_ = await self._assign(lease, keys, raw, current, candidate, "auto", kind)
        if code != AssignCode.ASSIGNED:
            return SwitchResult(False, failed, current, "stale"), None
        log.warning(
            "agent %s: subscription switched %s -> %s after a %s failure (fence %d)",
            agent_id,
            failed,
            candidate,
            kind,
            lease.fence,
        )
        return (
            SwitchResult(True, failed, candidate, "switched"),
            self._event(agent_id, failed, candidate, "auto", kind),
        )

    async def _assign(
        self,
        lease: Lease,
        keys: AgentKeys,
        raw: str,
        current: str,
        new: str,
        reason: str,
        kind: str,
    ) -> list[Any]:
        agent_id = keys.lease.resource.removeprefix("a:")
        reply: list[Any] = await guarded(
            self._scripts.assign(
                keys=[keys.lease.lease, keys.lease.fence, keys.assignment, keys.events],
                args=[
                    lease.token,
                    lease.fence,
                    raw,
                    new,
                    reason,
                    kind,
                    agent_id,
                    self._max_events,
                    current,
                ],
            )
        )
        return [AssignCode(reply[0]), *reply[1:]]

    async def _record_failure(self, keys: AgentKeys, failed: str) -> None:
        now_ms = round(time.time() * 1000)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zadd(keys.failures, {failed: now_ms})
            pipe.zremrangebyscore(keys.failures, "-inf", now_ms - self._window_ms)
            pipe.pexpire(keys.failures, self._window_ms)
            await guarded(pipe.execute())

    async def _read(self, keys: AgentKeys, priority: tuple[str, ...]) -> tuple[str, str, set[str]]:
        """(stored assignment or '', effective assignment, subscriptions failed in the window)."""
        since = round(time.time() * 1000) - self._window_ms
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hget(keys.assignment, "subscription")
            pipe.zrangebyscore(keys.failures, since, "+inf")
            stored, recent = await guarded(pipe.execute())
        raw = as_text(stored) if stored else ""
        return raw, _effective(raw, priority), {as_text(s) for s in recent}

    def _known(self, agent_id: str, subscription: str) -> tuple[str, ...]:
        priority = self.priority(self._agents.resolve(agent_id))
        if subscription not in priority:
            raise UnknownSubscriptionError(agent_id, subscription)
        return priority

    def _outcome(self, result: SwitchResult) -> SwitchResult:
        self._metrics.switches.labels(result.reason).inc()
        return result

    @staticmethod
    def _event(agent_id: str, old: str, new: str, reason: str, kind: str) -> dict[str, Any]:
        return {
            "type": "subscription_switched",
            "agent_id": agent_id,
            "from": old,
            "to": new,
            "reason": reason,
            "kind": kind,
        }


def _effective(stored: object, priority: tuple[str, ...]) -> str:
    text = as_text(stored) if stored else ""
    return text if text in priority else priority[0]


def _iso_ms(epoch_ms: float) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).isoformat(timespec="milliseconds")


def _iso_us(epoch_us: int) -> str:
    return _iso_ms(epoch_us / 1000)
