"""What the holder of a closed reload gate does in Redis (`reload.py` decides when): note
its phase, drain the runs in flight on the old subscription (re-queueing those still there
at the drain timeout), and open the gate on the subscription the agent now holds."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from app.errors import LeaseLostError, RedisUnavailableError
from app.keys import AgentKeys
from app.locks import Lease
from app.metrics import Metrics
from app.redis import as_text, guarded
from app.redis.pubsub import PubSubHub
from app.sessions.ids import locate_run
from app.sessions.ref import SessionRef
from app.sessions.requeue import Requeues
from app.subscriptions.gate_scripts import GateCode, GateScripts
from app.subscriptions.webhook import Webhook

log = logging.getLogger(__name__)

MAX_PAUSE = 5.0
"""The holder looks again at least this often (expired entries, cooldowns ending)."""
MIN_PAUSE = 0.01


@dataclass(slots=True)
class GateCycle:
    """One closing of a gate, as its holder goes through it."""

    agent_id: str
    keys: AgentKeys
    gate: Lease
    old: str
    new: str
    reason: str
    kind: str
    drain_timeout: float
    seq: int = 0
    committed: bool = False


class HeldGates:
    def __init__(
        self,
        scripts: GateScripts,
        hub: PubSubHub,
        requeues: Requeues,
        metrics: Metrics,
        *,
        events_max_length: int,
        webhook: Webhook | None,
    ) -> None:
        self._scripts = scripts
        self._hub = hub
        self._requeues = requeues
        self._metrics = metrics
        self._max_events = events_max_length
        self._webhook = webhook

    async def drain(self, cycle: GateCycle) -> None:
        """Wait for the runs in flight on the old subscription, up to the drain timeout;
        then re-queue those still there and wait for them to leave."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + cycle.drain_timeout
        requeued: set[str] = set()
        async with self._hub.watch(cycle.keys.left) as left:
            while True:
                left.clear()
                entries = await self.inflight(cycle.keys, cycle.old)
                if not entries:
                    return
                now = loop.time()
                if now >= deadline:
                    fresh = [e for e in entries if e not in requeued]
                    if fresh:
                        await self._requeue(cycle, fresh)
                        requeued.update(fresh)
                pause = min(min(entries.values()), MAX_PAUSE)
                if now < deadline:
                    pause = min(pause, deadline - now)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(pause, MIN_PAUSE)):
                        await left.wait()

    async def _requeue(self, cycle: GateCycle, entries: list[str]) -> None:
        log.warning(
            "agent %s: drain timeout (%gs): re-queueing %d run(s) still on %s",
            cycle.agent_id,
            cycle.drain_timeout,
            len(entries),
            cycle.old,
        )
        await self.note(cycle, "agent_drain_timeout", phase="requeueing", requeued=len(entries))
        for entry in entries:
            run_id, _, fence = entry.rpartition("/")
            session = SessionRef.of(*locate_run(run_id))
            if await self._requeues.request(session, run_id, int(fence), "drain_timeout"):
                self._metrics.drain_requeued.inc()
            else:  # it no longer runs under that fence: its entry was left behind
                await guarded(
                    self._scripts.leave(
                        keys=[cycle.keys.inflight, cycle.gate.keys.lease],
                        args=[entry, cycle.keys.left],
                    )
                )

    async def commit(self, cycle: GateCycle, target: str, *, reloaded: bool) -> None:
        reply = await guarded(
            self._scripts.commit(
                keys=[
                    cycle.gate.keys.lease,
                    cycle.keys.assignment,
                    cycle.keys.gate_state,
                    cycle.keys.events,
                ],
                args=[
                    cycle.gate.token,
                    cycle.gate.fence,
                    cycle.old,
                    target,
                    cycle.reason,
                    cycle.kind,
                    cycle.agent_id,
                    self._max_events,
                    cycle.gate.keys.channel,
                    "1" if reloaded else "0",
                ],
            )
        )
        if GateCode(reply[0]) != GateCode.OK:
            raise LeaseLostError(cycle.gate.key, cycle.gate.fence, "gate taken before opening")
        cycle.committed = True
        log.warning(
            "agent %s: gate opened on %s (%s)",
            cycle.agent_id,
            target,
            "reloaded" if reloaded else "no reload needed",
        )
        if target != cycle.old and self._webhook is not None:
            self._webhook.send(
                {
                    "type": "subscription_switched",
                    "agent_id": cycle.agent_id,
                    "from": cycle.old,
                    "to": target,
                    "reason": cycle.reason,
                    "kind": cycle.kind,
                }
            )

    async def inflight(self, keys: AgentKeys, subscription: str) -> dict[str, float]:
        """The entries in flight on `subscription`, with the seconds until each expires."""
        while True:
            try:
                flat = await guarded(
                    self._scripts.inflight(keys=[keys.inflight], args=[subscription])
                )
            except RedisUnavailableError:
                await asyncio.sleep(MAX_PAUSE / 10)  # the heartbeat stops us if it lasts
                continue
            return {as_text(flat[i]): int(flat[i + 1]) / 1000 for i in range(0, len(flat), 2)}

    async def note(self, cycle: GateCycle, event: str, **fields: Any) -> None:
        cycle.seq += 1
        pairs = [str(part) for item in fields.items() for part in item]
        await guarded(
            self._scripts.note(
                keys=[cycle.gate.keys.lease, cycle.keys.gate_state, cycle.keys.events],
                args=[cycle.gate.token, cycle.seq, event, cycle.agent_id, self._max_events, *pairs],
            )
        )
