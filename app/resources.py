"""What one application instance shares across requests, built and closed in the lifespan."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from redis.asyncio import Redis

from app.agents import AgentRegistry
from app.agents.python import steerable
from app.auth import ApiKeys, InternalSecret
from app.capacity import CapacityGate
from app.executions import ExecutionStore
from app.fleet.sessions import SessionListing
from app.fleet.workers import WorkerRegistry
from app.keys import CONTROL_CHANNEL, WAKE_CHANNEL
from app.locks import LeaseManager, LeaseScripts
from app.metrics import Metrics
from app.redis import create_redis
from app.redis.pubsub import PubSubHub
from app.sessions.admission import Admissions
from app.sessions.control import Control
from app.sessions.holder import HolderDeps
from app.sessions.index import SessionIndex
from app.sessions.lua import Limits
from app.sessions.reads import Reads
from app.sessions.renewal import Renewals
from app.sessions.requeue import Requeues
from app.sessions.service import Sessions
from app.sessions.sweeper import Sweeper
from app.sessions.waiters import Waiters
from app.sessions.writes import HolderWrites
from app.settings import Settings
from app.subscriptions.agent_call import AgentCalls
from app.subscriptions.gate import ReloadGate
from app.subscriptions.gate_scripts import GateScripts
from app.subscriptions.reload import Reloads
from app.subscriptions.scripts import SubscriptionScripts
from app.subscriptions.switcher import Subscriptions
from app.subscriptions.webhook import Webhook
from app.webhooks.deliverer import Deliverer, open_deliverer
from app.webhooks.notices import Notices
from app.webhooks.outbox import Outbox

log = logging.getLogger(__name__)


class Script(Protocol):
    """What readiness needs of a registered script: its SHA1 and its text."""

    sha: Any
    script: Any


@dataclass(slots=True)
class Resources:
    settings: Settings
    redis: Redis
    scripts: list[Script]
    hub: PubSubHub
    leases: LeaseManager
    reads: Reads
    control: Control
    sessions: Sessions
    in_flight: Callable[[], int]
    """How many runs this worker is running now."""
    renewals: Renewals
    sweeper: Sweeper
    outbox: Outbox
    notices: Notices
    deliverer: Deliverer | None
    agents: AgentRegistry
    subscriptions: Subscriptions
    webhook: Webhook | None
    executions: ExecutionStore
    capacity: CapacityGate
    reload_gate: ReloadGate
    api_keys: ApiKeys
    internal_secret: InternalSecret
    metrics: Metrics
    workers: WorkerRegistry
    listing: SessionListing

    @classmethod
    async def open(cls, settings: Settings, metrics: Metrics, agents: AgentRegistry) -> Resources:
        redis = create_redis(settings)
        worker = f"{socket.gethostname()}:{os.getpid()}"
        lease_scripts = LeaseScripts.register(redis)
        hub = PubSubHub(redis)
        leases = LeaseManager(
            redis,
            lease_scripts,
            hub,
            ttl=settings.lease_ttl_seconds,
            heartbeat_interval=settings.heartbeat_interval,
            metrics=metrics,
        )
        subscription_scripts = SubscriptionScripts.register(redis)
        webhook = Webhook(settings.webhook_url.get_secret_value()) if settings.webhook_url else None
        subscriptions = Subscriptions(
            redis,
            subscription_scripts,
            leases,
            agents,
            metrics,
            cooldowns=settings.cooldowns,
            switch_wait=settings.switch_wait_timeout_seconds,
            switch_ttl=settings.switch_lease_ttl_seconds,
            events_max_length=settings.events_max_length,
            webhook=webhook,
        )
        limits = Limits(
            lease_ttl_ms=max(1, round(settings.lease_ttl_seconds * 1000)),
            retention_ms=max(1, round(settings.run_retention_seconds * 1000)),
            queue_cap=settings.queue_cap,
            retry_lost=settings.retry_lost_runs,
            call_timeout=settings.redis_timeout_seconds,
            default_policy=settings.default_busy_policy,
        )
        admissions = Admissions(
            redis,
            limits,
            worker=worker,
            steerable=steerable((agent_id, agents.get(agent_id)) for agent_id in agents.ids()),
        )
        writes = HolderWrites(redis, limits)
        renewals = Renewals(redis, limits, interval=settings.heartbeat_interval, metrics=metrics)
        control = Control(redis, limits)
        reads = Reads(
            redis,
            timeout=settings.redis_timeout_seconds,
            default_policy=settings.default_busy_policy,
        )
        index = SessionIndex(redis, limits, worker=worker)
        capacity = CapacityGate.open(redis, hub, settings, agents.config, metrics, worker=worker)
        requeues = Requeues(redis, limits)
        gate_scripts = GateScripts.register(redis)
        subscriptions.reloads = Reloads(
            redis,
            gate_scripts,
            subscription_scripts.standings,
            leases,
            hub,
            agents,
            requeues,
            metrics,
            ttl=settings.switch_lease_ttl_seconds,
            events_max_length=settings.events_max_length,
            webhook=webhook,
        )
        reload_gate = ReloadGate(
            redis,
            gate_scripts,
            hub,
            agents,
            capacity.marks,
            metrics,
            ttl=settings.lease_ttl_seconds,
            interval=settings.heartbeat_interval,
        )
        calls = AgentCalls(agents, subscriptions, capacity)
        calls.gate = reload_gate
        deps = HolderDeps(
            writes=writes,
            renewals=renewals,
            calls=calls,
            reads=reads,
            control=control,
            waiters=Waiters(reads, hub),
            metrics=metrics,
            lease_ttl=settings.lease_ttl_seconds,
            active={},
            early_stop=lambda _: None,
            closing=lambda: False,
            gates=[reload_gate, capacity],  # entered in this order
            requeues=requeues,
        )
        sessions = Sessions(admissions, index, deps, deadline=settings.redis_timeout_seconds)
        hub.listen(CONTROL_CHANNEL, sessions.on_control)
        hub.listen(WAKE_CHANNEL, sessions.on_wake)
        sweeper = Sweeper(
            index,
            sessions,
            leases,
            metrics,
            interval=settings.sweep_interval_seconds,
            idle_grace=2 * settings.lease_ttl_seconds,
        )
        outbox = Outbox(redis, limits)
        notices = Notices(redis, [a for a in agents.ids() if agents.subscriptions_of(a)])
        deliverer = await open_deliverer(
            redis, settings, outbox, index, leases, notices=notices, webhook=webhook
        )
        workers = WorkerRegistry(
            redis,
            worker_id=worker,
            interval=settings.worker_heartbeat_seconds,
            held=lambda: list(deps.active),
            finished=metrics.runs_finished_here,
            timeout=settings.redis_timeout_seconds,
        )
        hub.start()
        reload_gate.start()
        workers.start()
        renewals.start()
        sweeper.start()
        if deliverer is not None:
            deliverer.start()
        scripts: list[Script] = [
            *lease_scripts.all(),
            *subscription_scripts.all(),
            *admissions.scripts,
            *writes.scripts,
            *renewals.scripts,
            *control.scripts,
            *index.scripts,
            *outbox.scripts,
            *notices.scripts,
            *capacity.scripts,
            *requeues.scripts,
            *gate_scripts.all(),
        ]
        secret = settings.internal_secret
        return cls(
            settings=settings,
            redis=redis,
            scripts=scripts,
            hub=hub,
            leases=leases,
            reads=reads,
            control=control,
            sessions=sessions,
            in_flight=lambda: len(deps.active),
            renewals=renewals,
            sweeper=sweeper,
            outbox=outbox,
            notices=notices,
            deliverer=deliverer,
            agents=agents,
            subscriptions=subscriptions,
            webhook=webhook,
            capacity=capacity,
            reload_gate=reload_gate,
            executions=ExecutionStore(redis, retention_seconds=settings.run_retention_seconds),
            api_keys=ApiKeys(settings.api_keys),
            internal_secret=InternalSecret(secret.get_secret_value() if secret else None),
            metrics=metrics,
            workers=workers,
            listing=SessionListing(redis, timeout=settings.redis_timeout_seconds),
        )

    async def load_scripts(self) -> None:
        """Make sure every script is in Redis' script cache (readiness)."""
        present = await self.redis.script_exists(*(s.sha for s in self.scripts))
        for script, loaded in zip(self.scripts, present, strict=True):
            if not loaded:
                await self.redis.script_load(script.script)

    async def close(self) -> None:
        await self.sweeper.close()
        if self.deliverer is not None:
            await self.deliverer.close()
        if running := self.in_flight():
            log.warning(
                "stopping: waiting up to %gs (LEASEGATE_SHUTDOWN_GRACE_SECONDS) for %d run(s) "
                "in flight to finish, then interrupting them",
                self.settings.shutdown_grace_seconds,
                running,
            )
        await self.sessions.close(self.settings.shutdown_grace_seconds)
        if self.subscriptions.reloads is not None:
            await self.subscriptions.reloads.aclose()
        await self.reload_gate.close()
        await self.workers.close()  # listed while it drains its runs
        await self.renewals.close()
        if self.webhook is not None:
            await self.webhook.aclose()
        await self.agents.aclose()
        await self.hub.close()
        await self.redis.aclose()
