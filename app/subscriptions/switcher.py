"""One subscription switch per agent per burst of failures, across every worker.

On a refused subscription (`classify`: rate_limit, quota, auth):

1. the refusal is recorded outside any lock (`cooldowns`): the subscription cools for its
   kind's cooldown, or is disabled for `auth`; a cooling or disabled subscription is no
   candidate, and switching never clears a standing, so an agent cannot ping-pong between
   two exhausted subscriptions;
2. the assignment is read; if it is no longer the failed subscription, the failure is stale;
3. the agent's switch lease is taken (blocking, with a timeout) and the assignment read
   again: a change since step 2 means another worker switched already;
4. the first subscription in priority order that is neither the failed one nor cooling
   nor disabled is assigned by a compare-and-set fenced by the lease's fence (an expired holder
   cannot overwrite a newer assignment), which also writes the one event of the switch;
   with no candidate, "no viable subscription" is recorded once, and the answer says in
   how many seconds the first subscription comes back (`retry_in`);
5. outside the lease, the webhook (if any) gets one POST.

For an agent with a reload hook, step 4 closes the agent's reload gate instead
(`reload.py`): the assignment changes, with its event and webhook, once the runs on the
failed subscription drained and the agent reloaded the new one; while the gate is closed,
a failure of the same subscription is stale (its run waits at the gate).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis

from app.agents import AgentRegistry
from app.errors import LeaseTimeoutError, UnknownSubscriptionError
from app.keys import AgentKeys, agent_keys
from app.locks import Lease, LeaseManager
from app.metrics import Metrics
from app.redis import as_text, guarded
from app.subscriptions import cooldowns, views
from app.subscriptions.classify import Cooldowns
from app.subscriptions.cooldowns import Standings
from app.subscriptions.outcomes import SwitchResult, switch_event
from app.subscriptions.scripts import AssignCode, SubscriptionScripts
from app.subscriptions.views import effective
from app.subscriptions.webhook import Webhook

if TYPE_CHECKING:
    from app.subscriptions.reload import Reloads

log = logging.getLogger(__name__)


class Subscriptions:
    def __init__(
        self,
        redis: Redis,
        scripts: SubscriptionScripts,
        leases: LeaseManager,
        agents: AgentRegistry,
        metrics: Metrics,
        *,
        cooldowns: Cooldowns,
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
        self.cooldowns = cooldowns
        self._wait = switch_wait
        self._ttl = switch_ttl
        self._max_events = events_max_length
        self._webhook = webhook
        self.reloads: Reloads | None = None
        """Set for agents with a reload hook: a switch closes their gate (`reload.py`)."""

    def priority(self, agent_id: str) -> tuple[str, ...]:
        return self._agents.subscriptions_of(agent_id)

    async def current(self, agent_id: str) -> str | None:
        """The subscription the agent uses now; None for an agent without subscriptions."""
        priority = self.priority(agent_id)
        if not priority:
            return None
        stored = await guarded(self._redis.hget(agent_keys(agent_id).assignment, "subscription"))
        return effective(stored, priority)

    async def back_in(self, agent_id: str) -> float | None:
        """Seconds until the agent's first cooling subscription comes back (0: one is
        viable now); None if it has none cooling or viable (all disabled)."""
        priority = self.priority(agent_id)
        if not priority:
            return None
        standings = await cooldowns.read(self._scripts.standings, agent_keys(agent_id).refusals)
        if any(standings.viable(sub) for sub in priority):
            return 0.0
        return standings.back_in(priority)

    async def handle_failure(
        self, agent_id: str, failed: str, kind: str, cooldown: float | None = None
    ) -> SwitchResult:
        """Record a refusal of `failed` (`cooldown`: the provider's, if it gave one) and
        switch once per burst."""
        priority = self._known(agent_id, failed)
        keys = agent_keys(agent_id)
        seconds = self.cooldowns.of(kind, cooldown)
        await cooldowns.refuse(self._scripts.refuse, keys.refusals, failed, kind, seconds)
        self._metrics.refusals.labels(kind).inc()
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
            if self._gated(agent_id):
                return await self._assign_gated(lease, keys, raw, current, subscription)
            if current == subscription:
                return SwitchResult(False, current, current, "assigned")
            code, *_ = await self._assign(lease, keys, raw, current, subscription, "manual", "")
        if code != AssignCode.ASSIGNED:
            raise RuntimeError(f"manual assignment of {agent_id!r} refused ({code!r})")
        event = switch_event(agent_id, current, subscription, "manual", "")
        if self._webhook is not None:
            self._webhook.send(event)
        self._metrics.switches.labels("manual").inc()
        return SwitchResult(True, current, subscription, "assigned")

    async def enable(self, agent_id: str, subscription: str) -> dict[str, Any]:
        """Make a disabled (or cooling) subscription a candidate again."""
        self._known(agent_id, subscription)
        refusals = agent_keys(agent_id).refusals
        was = await cooldowns.enable(self._scripts.enable, refusals, subscription)
        if was != "active":
            log.warning("agent %s: subscription %s enabled (was %s)", agent_id, subscription, was)
            if self.reloads is not None and self._gated(agent_id):
                await self.reloads.request(agent_id, subscription)  # a closed gate tries it
        return {"agent_id": agent_id, "subscription_id": subscription, "was": was}

    async def state(self, agent_id: str) -> dict[str, Any]:
        return await views.agent_state(
            self._redis,
            self._scripts.standings,
            agent_id,
            self.priority(agent_id),
            gated=self._gated(agent_id),
        )

    async def events(self, agent_ids: list[str], limit: int) -> list[dict[str, Any]]:
        """The newest events of these agents, newest first."""
        return await views.agent_events(self._redis, agent_ids, limit)

    async def _switch_held(
        self, lease: Lease, keys: AgentKeys, priority: tuple[str, ...], failed: str, kind: str
    ) -> tuple[SwitchResult, dict[str, Any] | None]:
        agent_id = keys.lease.resource.removeprefix("a:")
        raw, current, standings = await self._read(keys, priority)
        if current != failed:
            return SwitchResult(False, failed, current, "stale"), None
        candidate = next((s for s in priority if s != failed and standings.viable(s)), None)
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
            back_in = standings.back_in(priority)
            return SwitchResult(False, failed, failed, "no_alternative", back_in), None
        if self.reloads is not None and self._gated(agent_id):
            closed = await self.reloads.close(lease, keys, raw, current, candidate, "auto", kind)
            if not closed.closed:
                return SwitchResult(False, failed, closed.to, "stale"), None
            return SwitchResult(True, failed, candidate, "switched"), None
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
            switch_event(agent_id, failed, candidate, "auto", kind),
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

    async def _read(self, keys: AgentKeys, priority: tuple[str, ...]) -> tuple[str, str, Standings]:
        """(stored assignment or '', effective assignment, standings of the subscriptions)."""
        stored = await guarded(self._redis.hget(keys.assignment, "subscription"))
        standings = await cooldowns.read(self._scripts.standings, keys.refusals)
        raw = as_text(stored) if stored else ""
        return raw, effective(raw, priority), standings

    def _gated(self, agent_id: str) -> bool:
        return self.reloads is not None and self.reloads.guards(agent_id)

    async def _assign_gated(
        self, lease: Lease, keys: AgentKeys, raw: str, current: str, subscription: str
    ) -> SwitchResult:
        """A manual assignment of an agent that reloads: through its gate (drain, reload,
        then the assignment), or, while the gate is closed, the subscription its holder
        tries next."""
        assert self.reloads is not None
        agent_id = keys.lease.resource.removeprefix("a:")
        self._metrics.switches.labels("manual").inc()
        if await self.reloads.request(agent_id, subscription):
            return SwitchResult(True, current, subscription, "assigned")
        if current == subscription:
            return SwitchResult(False, current, current, "assigned")
        closed = await self.reloads.close(lease, keys, raw, current, subscription, "manual", "")
        return SwitchResult(closed.closed, current, closed.to, "assigned")

    def _known(self, agent_id: str, subscription: str) -> tuple[str, ...]:
        priority = self.priority(self._agents.resolve(agent_id))
        if subscription not in priority:
            raise UnknownSubscriptionError(agent_id, subscription)
        return priority

    def _outcome(self, result: SwitchResult) -> SwitchResult:
        self._metrics.switches.labels(result.reason).inc()
        return result
