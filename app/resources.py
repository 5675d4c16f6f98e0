"""What one application instance shares across requests, built and closed in the lifespan."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from app.connections import create_redis
from app.locks import LeaseManager, LeaseScripts, ReleaseWakeups
from app.metrics import Metrics
from app.settings import Settings


@dataclass(slots=True)
class Resources:
    settings: Settings
    redis: Redis
    lease_scripts: LeaseScripts
    wakeups: ReleaseWakeups
    leases: LeaseManager
    metrics: Metrics

    @classmethod
    async def open(cls, settings: Settings, metrics: Metrics) -> Resources:
        redis = create_redis(settings)
        lease_scripts = LeaseScripts.register(redis)
        wakeups = ReleaseWakeups(redis)
        leases = LeaseManager(
            redis,
            lease_scripts,
            wakeups,
            ttl=settings.lease_ttl_seconds,
            heartbeat_interval=settings.heartbeat_interval,
            metrics=metrics,
        )
        await wakeups.start()
        return cls(settings, redis, lease_scripts, wakeups, leases, metrics)

    async def close(self) -> None:
        await self.wakeups.close()
        await self.redis.aclose()
