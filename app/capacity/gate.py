"""The capacity gate: a run takes a slot of every capped resource it needs before its agent
starts (a `StartGate` of the holder), and one of its subscription's around each call of
its agent (`AgentCalls`), and gives them all back when it ends.

While a run waits, its session stays held (the holder's lease renewals go on) and the run
shows `queued` with `waiting_for` (`marks`). Its slots are renewed by one heartbeat per
run; a slot lost while the run goes on stops the run, which fails with
CapacitySlotLostError. A run past its start deadline while it waits ends `expired`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis

from app.capacity.caps import Caps, Need
from app.capacity.marks import WaitingMarks
from app.errors import CapacitySlotLostError, LeaseLostError, RedisUnavailableError, RunExpiredError
from app.keys import CAPACITY_TENANTS
from app.locks.slot_scripts import Claim, SlotScripts
from app.locks.slots import Slot, SlotHeartbeat, SlotManager
from app.metrics import Metrics
from app.redis import guarded
from app.sessions.models import Run

if TYPE_CHECKING:
    from app.agents.config import AgentsConfig
    from app.redis.pubsub import PubSubHub
    from app.settings import Settings

log = logging.getLogger(__name__)


class CapacityGate:
    def __init__(
        self,
        redis: Redis,
        slots: SlotManager,
        caps: Caps,
        metrics: Metrics,
        *,
        worker: str,
    ) -> None:
        self._redis = redis
        self.slots = slots
        self.caps = caps
        self.metrics = metrics
        self.marks = WaitingMarks(redis)
        self.worker = worker
        self._runs: dict[str, RunSlots] = {}
        self._tenants_seen: set[str] = set()

    @classmethod
    def open(
        cls,
        redis: Redis,
        hub: PubSubHub,
        settings: Settings,
        config: AgentsConfig,
        metrics: Metrics,
        *,
        worker: str,
    ) -> CapacityGate:
        """The worker's gate: the caps of the settings and the agents file, over slots kept
        like leases (the lease TTL, renewed at the heartbeat interval)."""
        slots = SlotManager(
            redis,
            SlotScripts.register(redis),
            hub,
            ttl=settings.lease_ttl_seconds,
            heartbeat_interval=settings.heartbeat_interval,
        )
        return cls(redis, slots, Caps.from_config(settings, config), metrics, worker=worker)

    @property
    def scripts(self) -> list[Any]:
        return [*self.slots.scripts.all(), self.marks.script]

    @contextlib.asynccontextmanager
    async def admit(self, run: Run, progress: object) -> AsyncIterator[None]:
        """Hold a slot of each of the run's capped resources for the body (the run)."""
        if not self.caps.any:
            yield
            return
        task = asyncio.current_task()
        assert task is not None
        holding = RunSlots(self, run, task)
        self._runs[run.run_id] = holding
        try:
            for need in self.caps.for_run(run.tenant, run.agent_id):
                await self._remember(need)
                await holding.take(need)
            await holding.unmark(starting=True)
            yield
        except asyncio.CancelledError:
            if holding.lost is not None and task.uncancel() == 0:
                raise holding.lost from None
            raise
        finally:
            self._runs.pop(run.run_id, None)
            await asyncio.shield(holding.close())
        if holding.lost is not None:  # lost after the run's last await
            raise holding.lost

    @contextlib.asynccontextmanager
    async def subscription(
        self, run: Run, subscription_id: str | None, progress: object
    ) -> AsyncIterator[None]:
        """Hold a slot of the subscription a call of the run's agent uses, if it is capped."""
        holding = self._runs.get(run.run_id)
        first_call = holding is not None and holding.calls == 0
        if holding is not None:
            holding.calls += 1
        need = self.caps.for_subscription(subscription_id)
        if need is None or holding is None:
            yield
            return
        # Its start deadline holds until its agent is first called, not after a switch.
        slot = await holding.take(need, deadline=first_call)
        await holding.unmark(starting=first_call)
        try:
            yield
        finally:
            await asyncio.shield(holding.give_back(slot))

    async def _remember(self, need: Need) -> None:
        """Note a tenant with a cap, once per process, for GET /internal/capacity."""
        if need.kind != "tenant" or need.name in self._tenants_seen:
            return
        try:
            await guarded(self._redis.sadd(CAPACITY_TENANTS, need.name))
            self._tenants_seen.add(need.name)
        except RedisUnavailableError:
            pass


class RunSlots:
    """The slots one run holds, renewed by one heartbeat."""

    def __init__(self, gate: CapacityGate, run: Run, task: asyncio.Task[Any]) -> None:
        self._gate = gate
        self._run = run
        self._task = task
        self._kinds: dict[str, Need] = {}
        self._marked = False
        self.calls = 0
        """Calls of the run's agent so far (a switch calls it again)."""
        self.lost: CapacitySlotLostError | None = None
        self.heartbeat = SlotHeartbeat(gate.slots, gate.slots.heartbeat_interval, self._on_lost)
        self.claim = Claim(
            run_id=run.run_id,
            tenant=run.tenant,
            worker=gate.worker,
            priority=run.priority,
            start_by_us=run.start_by,
        )

    async def take(self, need: Need, *, deadline: bool = True) -> Slot:
        """A slot of `need`, waiting for it; past the run's start deadline (unless
        `deadline` is False) RunExpiredError."""
        claim = self.claim if deadline else dataclasses.replace(self.claim, start_by_us=None)
        metrics = self._gate.metrics
        loop = asyncio.get_running_loop()
        waited_since: float | None = None
        outcome = "left"

        async def on_wait() -> None:
            nonlocal waited_since
            waited_since = loop.time()
            metrics.capacity_waiting.labels(need.resource).inc()
            log.info("run %s waits for capacity of %s", self._run.run_id, need.resource)
            await self.mark(need.waiting_for, starting=deadline)  # before its first call

        try:
            slot = await self._gate.slots.acquire(need.resource, need.cap, claim, on_wait)
            outcome = "granted"
        except RunExpiredError:
            outcome = "expired"
            raise
        finally:
            if waited_since is not None:
                metrics.capacity_waiting.labels(need.resource).dec()
                metrics.capacity_wait.labels(need.kind, outcome).observe(loop.time() - waited_since)
        metrics.capacity_held.labels(need.resource).inc()
        self._kinds[slot.token] = need
        self.heartbeat.add(slot)
        return slot

    async def give_back(self, slot: Slot) -> None:
        if self._kinds.pop(slot.token, None) is None:
            return  # lost meanwhile
        self.heartbeat.discard(slot)
        self._gate.metrics.capacity_held.labels(slot.key).dec()
        await self._gate.slots.release_quietly(slot)

    async def close(self) -> None:
        await self.heartbeat.stop()
        for slot in list(self.heartbeat.slots):
            await self.give_back(slot)
        await self.unmark()

    async def mark(self, waiting_for: str, *, starting: bool) -> None:
        self._marked = True
        await self._write_mark(waiting_for, starting=starting)

    async def unmark(self, *, starting: bool = False) -> None:
        """No longer waiting; `starting`: the run's agent is called next."""
        if self._marked:
            self._marked = False
            await self._write_mark("", starting=starting)

    async def _write_mark(self, value: str, *, starting: bool = False) -> None:
        run = self._run
        try:
            await self._gate.marks.mark(
                run.tenant, run.session_id, run.run_id, value, starting=starting
            )
        except RedisUnavailableError:
            log.warning("run %s: waiting_for %r not recorded, Redis unreachable", run.run_id, value)

    def _on_lost(self, slot: Slot, error: LeaseLostError) -> None:
        need = self._kinds.pop(slot.token, None)
        if need is None:
            return
        self._gate.metrics.capacity_losses.labels(need.kind).inc()
        self._gate.metrics.capacity_held.labels(slot.key).dec()
        if self.lost is None:
            self.lost = CapacitySlotLostError(slot.key, error.reason)
            self._task.cancel()
