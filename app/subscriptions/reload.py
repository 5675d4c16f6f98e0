"""Drain-aware reload: the switch holder's side of the reload gate (`gate.py`: the runs').

For an agent that holds its credentials itself (a reload hook), a switch from A to B is:

1. under the agent's switch lease, CLOSE: the gate (a fenced lease of its own, in the
   agent's hash slot) is taken with its state (from A, to B, draining) and one event; the
   assignment still says A. From here new runs of the agent wait at the gate;
2. outside the switch lease, in a task of this worker that heartbeats the gate: the runs in
   flight on A finish (their entries leave; a dead worker's expire), for at most the agent's
   `drain_timeout_seconds`; the ones still there then are stopped and re-queued at the head
   of their sessions (`app.sessions.requeue`), and their entries leave too;
3. the reload hook is called with B's credentials; if it fails, B gets no run: the next
   viable subscription is tried, or the gate stays closed (phase `failed`, the error in the
   gate's state and an `agent_reload_failed` event) until an operator enables one or assigns
   one (`request`), or a subscription's cooldown ends (A's: the agent still holds A, so it
   goes on with A, with no reload);
4. COMMIT, one script: the assignment becomes B (with its `subscription_switched` event),
   the gate opens and announces it; waiting runs start on B.

If the holder dies, the gate's lease expires: the gate opens with the assignment as it was
(A, since COMMIT never ran; or B, if it did): never half a switch. Waiting runs go on, and
the next refusal on A starts a new switch. A run never holds the gate past the drain timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from app.agents import AgentRegistry
from app.errors import LeaseLostError, ReloadFailedError
from app.keys import AgentKeys, agent_keys
from app.locks import Heartbeat, Lease, LeaseManager
from app.metrics import Metrics
from app.redis import as_text, guarded
from app.redis.pubsub import PubSubHub
from app.sessions.requeue import Requeues
from app.subscriptions import cooldowns
from app.subscriptions.gate_scripts import GateCode, GateScripts
from app.subscriptions.held_gate import MAX_PAUSE, MIN_PAUSE, GateCycle, HeldGates
from app.subscriptions.webhook import Webhook

log = logging.getLogger(__name__)

RELOAD_TIMEOUT = 60.0
"""How long a reload hook may take before it counts as failed."""


@dataclass(frozen=True, slots=True)
class Closed:
    """CLOSE's answer: whether this call closed the gate, and the switch's target."""

    closed: bool
    to: str


class Reloads:
    def __init__(
        self,
        redis: Redis,
        scripts: GateScripts,
        standings: AsyncScript,
        leases: LeaseManager,
        hub: PubSubHub,
        agents: AgentRegistry,
        requeues: Requeues,
        metrics: Metrics,
        *,
        ttl: float,
        events_max_length: int,
        webhook: Webhook | None = None,
    ) -> None:
        self._redis = redis
        self._scripts = scripts
        self._standings = standings
        self._leases = leases
        self._hub = hub
        self._agents = agents
        self._metrics = metrics
        self._ttl = ttl
        self._max_events = events_max_length
        self._held = HeldGates(
            scripts, hub, requeues, metrics, events_max_length=events_max_length, webhook=webhook
        )
        self._tasks: set[asyncio.Task[None]] = set()

    def guards(self, agent_id: str) -> bool:
        config = self._agents.config.agents.get(agent_id)
        return config is not None and config.reloads

    async def close(
        self,
        switch: Lease,
        keys: AgentKeys,
        raw: str,
        old: str,
        new: str,
        reason: str,
        kind: str,
    ) -> Closed:
        """Close the agent's gate for a switch from `old` to `new` (the caller holds the
        switch lease, and read `raw` as the stored assignment), and start draining."""
        agent_id = keys.lease.resource.removeprefix("a:")
        config = self._agents.config.agents[agent_id]
        token = secrets.token_hex(16)
        sent = asyncio.get_running_loop().time()
        reply = await guarded(
            self._scripts.close(
                keys=[
                    keys.lease.lease,
                    keys.lease.fence,
                    keys.assignment,
                    keys.gate.lease,
                    keys.gate.fence,
                    keys.gate_state,
                    keys.events,
                ],
                args=[
                    switch.token,
                    switch.fence,
                    raw,
                    token,
                    _ms(self._ttl),
                    old,
                    new,
                    reason,
                    kind,
                    agent_id,
                    self._max_events,
                    _ms(config.drain_timeout),
                ],
            )
        )
        code = GateCode(reply[0])
        if code == GateCode.HELD:
            return Closed(False, as_text(reply[1]) or new)
        if code != GateCode.OK:
            return Closed(False, old)
        gate = Lease(keys.gate, token, int(reply[1]), self._ttl, sent + self._ttl)
        log.warning(
            "agent %s: gate closed for a switch %s -> %s (gate fence %d); draining for up to %gs",
            agent_id,
            old,
            new,
            gate.fence,
            config.drain_timeout,
        )
        task = asyncio.create_task(
            self._hold(
                GateCycle(agent_id, keys, gate, old, new, reason, kind, config.drain_timeout)
            ),
            name=f"reload-gate:{agent_id}",
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return Closed(True, new)

    async def request(self, agent_id: str, subscription: str) -> bool:
        """An operator's choice (an assignment, an enable) for a closed gate: its holder
        tries `subscription` next. False when the gate is open."""
        keys = agent_keys(agent_id)
        if not await guarded(self._redis.exists(keys.gate.lease)):
            return False
        await guarded(self._redis.hset(keys.gate_state, "requested", subscription))
        await guarded(self._redis.publish(keys.left, "request"))
        return True

    async def aclose(self) -> None:
        """Stop holding gates (on shutdown): each opens with the assignment it had."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5.0)

    async def _hold(self, cycle: GateCycle) -> None:
        task = asyncio.current_task()
        assert task is not None
        lost: list[LeaseLostError] = []

        def on_lost(error: LeaseLostError) -> None:
            lost.append(error)
            task.cancel()

        gate = cycle.gate
        heartbeat = Heartbeat(
            gate,
            self._ttl / 3,
            functools.partial(self._leases.renew, gate),
            on_lost,
            self._metrics,
        )
        heartbeat.start()
        try:
            await self._held.drain(cycle)
            await self._reload(cycle)
        except asyncio.CancelledError:
            if not lost:
                raise
            log.error("agent %s: gate lost while held; it opens as it was", cycle.agent_id)
        except Exception:
            log.exception("agent %s: reload gate failed; it opens as it was", cycle.agent_id)
        finally:
            await heartbeat.stop()
            if not cycle.committed and not lost:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._leases.release(gate))

    async def _reload(self, cycle: GateCycle) -> None:
        """Reload the agent with the target (or the next viable subscription), then commit."""
        failed: set[str] = set()
        target: str | None = cycle.new
        while True:
            requested = await self._requested(cycle.keys)
            if requested is not None:
                failed.discard(requested)
                target = requested
            if target is None:
                target = await self._viable(cycle, failed)
            if target is None:
                await self._wait_for_change(cycle)
                continue
            if target == cycle.old:
                await self._held.commit(cycle, target, reloaded=False)
                return
            await self._held.note(cycle, "", phase="reloading", to=target)
            try:
                await self._call_hook(cycle.agent_id, target)
            except ReloadFailedError as exc:
                self._metrics.reloads.labels("failed").inc()
                log.error("agent %s: %s", cycle.agent_id, exc)
                failed.add(target)
                await self._held.note(
                    cycle, "agent_reload_failed", phase="failed", failed=target, error=str(exc)
                )
                target = None
                continue
            self._metrics.reloads.labels("ok").inc()
            await self._held.commit(cycle, target, reloaded=True)
            return

    async def _call_hook(self, agent_id: str, subscription: str) -> None:
        config = self._agents.config.agents[agent_id]
        hook = getattr(self._agents.get(agent_id), config.reload_method or "reload")
        credentials = self._agents.credentials(subscription)
        try:
            async with asyncio.timeout(RELOAD_TIMEOUT):
                await hook(credentials)
        except ReloadFailedError:
            raise
        except Exception as exc:  # the hook is the agent's own code
            detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if credentials.api_key:
                detail = detail.replace(credentials.api_key, "[redacted]")
            raise ReloadFailedError(agent_id, subscription, detail) from None

    async def _viable(self, cycle: GateCycle, failed: set[str]) -> str | None:
        """The first subscription that may be used now: one not refused and whose reload
        did not fail, or the old one once its cooldown ended."""
        standings = await cooldowns.read(self._standings, cycle.keys.refusals)
        for sub in self._agents.subscriptions_of(cycle.agent_id):
            if sub not in failed and standings.viable(sub):
                return sub
        return None

    async def _wait_for_change(self, cycle: GateCycle) -> None:
        """Nothing to reload: wait for an operator's request or a cooldown's end."""
        await self._held.note(cycle, "", phase="failed")
        standings = await cooldowns.read(self._standings, cycle.keys.refusals)
        back_in = standings.back_in(self._agents.subscriptions_of(cycle.agent_id))
        pause = MAX_PAUSE if back_in is None else min(MAX_PAUSE, back_in + MIN_PAUSE)
        async with self._hub.watch(cycle.keys.left) as changed:
            if await self._requested(cycle.keys, peek=True) is not None:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(pause, MIN_PAUSE)):
                    await changed.wait()

    async def _requested(self, keys: AgentKeys, *, peek: bool = False) -> str | None:
        value = await guarded(self._redis.hget(keys.gate_state, "requested"))
        if value is None:
            return None
        if not peek:
            await guarded(self._redis.hdel(keys.gate_state, "requested"))
        return as_text(value)


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
