"""A lease manager with its own Redis client and wakeups, as one worker process has."""

from __future__ import annotations

from app.locks import LeaseManager, LeaseScripts
from app.metrics import Metrics
from app.redis import create_redis
from app.redis.pubsub import PubSubHub
from tests.support.settings import make_settings


class LeaseStack:
    """A LeaseManager with its own client and wakeups, as one worker process would have."""

    def __init__(self, url: str, metrics: Metrics, ttl: float, heartbeat: float) -> None:
        self.redis = create_redis(make_settings(url))
        self.wakeups = PubSubHub(self.redis)
        self.manager = LeaseManager(
            self.redis,
            LeaseScripts.register(self.redis),
            self.wakeups,
            ttl=ttl,
            heartbeat_interval=heartbeat,
            metrics=metrics,
        )

    async def __aenter__(self) -> LeaseManager:
        self.wakeups.start()
        return self.manager

    async def __aexit__(self, *_: object) -> None:
        await self.wakeups.close()
        await self.redis.aclose()
