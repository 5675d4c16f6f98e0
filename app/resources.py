"""What one application instance shares across requests, built and closed in the lifespan."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from app.agents import AgentRegistry
from app.auth import ApiKeys, InternalSecret
from app.executions import ExecutionStore
from app.keys import CONTROL_CHANNEL, FINISHED_CHANNEL, RELOAD_CHANNEL, WAKE_CHANNEL
from app.locks import LeaseManager, LeaseScripts
from app.metrics import Metrics
from app.redis import create_redis
from app.redis.pubsub import PubSubHub
from app.sessions.runner import SessionRunner
from app.sessions.scripts import SessionScripts
from app.sessions.store import SessionStore
from app.sessions.sweeper import Sweeper
from app.settings import Settings
from app.subscriptions.scripts import SubscriptionScripts
from app.subscriptions.switcher import Subscriptions
from app.subscriptions.webhook import Webhook


@dataclass(slots=True)
class Resources:
    settings: Settings
    redis: Redis
    scripts: list[AsyncScript]
    hub: PubSubHub
    leases: LeaseManager
    store: SessionStore
    runner: SessionRunner
    sweeper: Sweeper
    agents: AgentRegistry
    subscriptions: Subscriptions
    webhook: Webhook | None
    executions: ExecutionStore
    api_keys: ApiKeys
    internal_secret: InternalSecret
    metrics: Metrics

    @classmethod
    async def open(cls, settings: Settings, metrics: Metrics, agents: AgentRegistry) -> Resources:
        redis = create_redis(settings)
        lease_scripts = LeaseScripts.register(redis)
        session_scripts = SessionScripts.register(redis)
        hub = PubSubHub(redis)
        leases = LeaseManager(
            redis,
            lease_scripts,
            hub,
            ttl=settings.lease_ttl_seconds,
            heartbeat_interval=settings.heartbeat_interval,
            metrics=metrics,
        )
        store = SessionStore(
            redis,
            session_scripts,
            lease_ttl=settings.lease_ttl_seconds,
            retention_seconds=settings.run_retention_seconds,
            queue_cap=settings.queue_cap,
            worker=f"{socket.gethostname()}:{os.getpid()}",
            retry_lost=settings.retry_lost_runs,
        )
        subscription_scripts = SubscriptionScripts.register(redis)
        webhook = Webhook(settings.webhook_url.get_secret_value()) if settings.webhook_url else None
        subscriptions = Subscriptions(
            redis,
            subscription_scripts,
            leases,
            agents,
            metrics,
            failure_window=settings.subscription_failure_window_seconds,
            switch_wait=settings.switch_wait_timeout_seconds,
            switch_ttl=settings.switch_lease_ttl_seconds,
            events_max_length=settings.events_max_length,
            webhook=webhook,
        )
        runner = SessionRunner(store, leases, agents, subscriptions, metrics)
        hub.listen(CONTROL_CHANNEL, runner.on_control)
        hub.listen(FINISHED_CHANNEL, runner.on_finished)
        hub.listen(RELOAD_CHANNEL, agents.on_reload)
        hub.listen(WAKE_CHANNEL, runner.on_wake)
        sweeper = Sweeper(store, runner, leases, metrics, interval=settings.sweep_interval_seconds,
                          idle_grace=2 * settings.lease_ttl_seconds)  # fmt: skip
        hub.start()
        sweeper.start()
        executions = ExecutionStore(redis, retention_seconds=settings.run_retention_seconds)
        secret = settings.internal_secret
        return cls(
            settings, redis, [*lease_scripts.all(), *session_scripts.all(),
            *subscription_scripts.all()], hub, leases, store, runner, sweeper, agents,
            subscriptions,
            webhook, executions, ApiKeys(settings.api_keys),
            InternalSecret(secret.get_secret_value() if secret else None), metrics,
        )  # fmt: skip

    async def load_scripts(self) -> None:
        """Make sure every script is in Redis' script cache (readiness)."""
        present = await self.redis.script_exists(*(s.sha for s in self.scripts))
        for script, loaded in zip(self.scripts, present, strict=True):
            if not loaded:
                await self.redis.script_load(script.script)

    async def close(self) -> None:
        await self.sweeper.close()
        await self.runner.close(self.settings.shutdown_grace_seconds)
        if self.webhook is not None:
            await self.webhook.aclose()
        await self.agents.aclose()
        await self.hub.close()
        await self.redis.aclose()
