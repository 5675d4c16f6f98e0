"""The reload gate as a run sees it: the first start gate (`app.sessions.holder.StartGate`).

An agent that holds its credentials itself (a `reload_url` or `reload_method` in the agents
file) must be told of a switch, and must not be sent runs meanwhile. Its gate is closed by
the switch holder (`reload.py`) while the runs on the old subscription drain and the agent
reloads. A run of such an agent passes the gate before its agent starts:

- gate open: one script records the run in flight on the agent's current subscription,
  which is the one the run then uses (`progress.subscription`); the entry is renewed by
  this worker every heartbeat interval and removed when the run ends, so a worker that dies
  stops counting once its entries' TTL has passed;
- gate closed: the run waits, shown `queued` with `waiting_for: "agent_reload"`, woken when
  the gate opens (pub/sub) and at the latest when its lease could have expired (its holder
  died: the gate opens by expiry), and passes then. Its stop, cancel or timeout end the wait;
  past its `start_within_seconds` it ends `expired`.

A run refused by the upstream in flight passes the gate again (`again`) before it is tried
on another subscription: it leaves the old subscription's count, so a drain never waits for
a run that waits for the gate.

Runs of agents without a reload hook pass at no cost (no Redis round trip).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Protocol

from redis.asyncio import Redis

from app.agents import AgentRegistry
from app.errors import RedisUnavailableError, RunExpiredError
from app.keys import AgentKeys, agent_keys
from app.metrics import Metrics
from app.redis import as_text, guarded
from app.redis.pubsub import PubSubHub
from app.sessions.ids import locate_run
from app.sessions.models import Run
from app.subscriptions.gate_scripts import GateCode, GateScripts
from app.tasks import cancel_and_wait

log = logging.getLogger(__name__)

WAITING_FOR = "agent_reload"
MIN_PAUSE = 0.005
MAX_PAUSE = 5.0
"""A waiting run checks the gate again at least this often, whatever pub/sub says."""


class Progress(Protocol):
    subscription: str | None


class Marks(Protocol):
    """Shows what a started run waits for (`app.capacity.marks.WaitingMarks`)."""

    async def mark(
        self, tenant: str, session_id: str, run_id: str, waiting_for: str, *, starting: bool = False
    ) -> None: ...


class ReloadGate:
    def __init__(
        self,
        redis: Redis,
        scripts: GateScripts,
        hub: PubSubHub,
        agents: AgentRegistry,
        marks: Marks,
        metrics: Metrics,
        *,
        ttl: float,
        interval: float,
    ) -> None:
        self._redis = redis
        self._scripts = scripts
        self._hub = hub
        self._agents = agents
        self._marks = marks
        self._metrics = metrics
        self._ttl_ms = max(1, round(ttl * 1000))
        self._interval = interval
        self._mine: dict[str, set[str]] = {}
        """This worker's entries in flight, by agent: what the renewal keeps alive."""
        self._task: asyncio.Task[None] | None = None

    def guards(self, agent_id: str) -> bool:
        config = self._agents.config.agents.get(agent_id)
        return config is not None and config.reloads and bool(config.subscriptions)

    @contextlib.asynccontextmanager
    async def admit(self, run: Run, progress: Progress) -> AsyncIterator[None]:
        """Wait for the agent's gate, then hold the run's place in flight for its length."""
        if not self.guards(run.agent_id):
            yield
            return
        keys = agent_keys(run.agent_id)
        entry = _entry(run)
        try:  # a wait stopped just as the run passed leaves no entry behind either
            progress.subscription = await self._pass(run, keys, entry, starting=True)
            yield
        finally:
            await asyncio.shield(self._leave(run.agent_id, keys, entry))

    async def again(self, run: Run, progress: Progress) -> str | None:
        """After a refusal in flight: leave the refused subscription and pass the gate
        again; the subscription to try next."""
        if not self.guards(run.agent_id):
            return None
        keys = agent_keys(run.agent_id)
        entry = _entry(run)
        await self._leave(run.agent_id, keys, entry)
        progress.subscription = await self._pass(run, keys, entry, starting=False)
        return progress.subscription

    def start(self) -> None:
        self._task = asyncio.create_task(self._renew_loop(), name="reload-gate-renewals")

    async def close(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)

    async def _pass(self, run: Run, keys: AgentKeys, entry: str, *, starting: bool) -> str:
        """Wait for the gate to let the run through; the subscription it then uses.
        `starting`: the run's agent was not called yet (a wait moves its `started_at`)."""
        priority = self._agents.subscriptions_of(run.agent_id)
        code, value, now_us = await self._enter(keys, entry, priority)
        if code == GateCode.OK:
            return value
        loop = asyncio.get_running_loop()
        began = loop.time()
        tenant, session_id = locate_run(run.run_id)
        await self._mark(tenant, session_id, run.run_id, WAITING_FOR, starting)
        passed = False
        log.info("run %s waits for agent %s to reload", run.run_id, run.agent_id)
        try:
            async with self._hub.watch(keys.gate.channel) as opened:
                while True:
                    opened.clear()  # before the check: an opening after it still wakes us
                    code, value, now_us = await self._enter(keys, entry, priority)
                    if code == GateCode.OK:
                        passed = True
                        break
                    pause = min(MAX_PAUSE, max(int(value) / 1000, MIN_PAUSE))
                    if run.start_by:
                        if now_us >= run.start_by:
                            raise RunExpiredError(
                                f"run {run.run_id} did not start in time: waited for agent "
                                f"{run.agent_id!r} to reload"
                            )
                        pause = min(pause, (run.start_by - now_us) / 1e6)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(pause):
                            await opened.wait()
        finally:
            self._metrics.gate_wait.observe(loop.time() - began)
            cleared = self._mark(tenant, session_id, run.run_id, "", starting and passed)
            await asyncio.shield(cleared)
        return value

    async def _enter(
        self, keys: AgentKeys, entry: str, priority: tuple[str, ...]
    ) -> tuple[GateCode, str, int]:
        """(OK, the subscription) | (REFUSED, the gate's PTTL in ms, Redis' now in µs)."""
        code, value, *now = await guarded(
            self._scripts.enter(
                keys=[keys.gate.lease, keys.assignment, keys.inflight],
                args=[entry, self._ttl_ms, *priority],
            )
        )
        if GateCode(code) == GateCode.OK:
            self._mine.setdefault(keys.lease.resource.removeprefix("a:"), set()).add(entry)
        return GateCode(code), as_text(value), int(as_text(now[0])) if now else 0

    async def _leave(self, agent_id: str, keys: AgentKeys, entry: str) -> None:
        mine = self._mine.get(agent_id)
        if mine is None or entry not in mine:
            return
        mine.discard(entry)
        if not mine:
            del self._mine[agent_id]
        try:
            await guarded(
                self._scripts.leave(keys=[keys.inflight, keys.gate.lease], args=[entry, keys.left])
            )
        except RedisUnavailableError:
            log.warning("agent %s: run %s left in flight; it expires", agent_id, entry)

    async def _mark(
        self, tenant: str, session_id: str, run_id: str, what: str, starting: bool = False
    ) -> None:
        try:
            await self._marks.mark(tenant, session_id, run_id, what, starting=starting)
        except RedisUnavailableError:
            log.warning("run %s: waiting_for not %s", run_id, "cleared" if not what else "set")

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            for agent_id, entries in list(self._mine.items()):
                try:
                    await guarded(
                        self._scripts.renew(
                            keys=[agent_keys(agent_id).inflight],
                            args=[self._ttl_ms, *sorted(entries)],
                        )
                    )
                except RedisUnavailableError:
                    log.warning("agent %s: runs in flight not renewed; retrying", agent_id)
                except Exception:  # never die silently while runs go on
                    log.exception("agent %s: renewing runs in flight failed", agent_id)


def _entry(run: Run) -> str:
    return f"{run.run_id}/{run.fence or 0}"
