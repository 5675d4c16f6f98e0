"""What one application instance shares across requests, built and closed in the lifespan."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from app.connections import create_redis
from app.locks import LeaseManager, LeaseScripts
from app.metrics import Metrics
from app.pubsub import PubSubHub
from app.settings import Settings


@dataclass(slots=True)
class Resources:
    settings: Settings
    redis: Redis
    lease_scripts: LeaseScripts
    hub: PubSubHub
    leases: LeaseManager
    metrics: Metrics

    @classmethod
    async def open(cls, settings: Settings, metrics: Metrics) -> Resources:
        redis = create_redis(settings)
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
        hub.start()
        return cls(settings, redis, lease_scripts, hub, leases, metrics)

    async def close(self) -> None:
        await self.hub.close()
        await self.redis.aclose()
