"""Request dependencies: the shared resources of the application instance."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from redis.asyncio import Redis

from app.locks import LeaseManager
from app.resources import Resources
from app.settings import Settings


async def get_resources(request: Request) -> Resources:
    resources: Resources = request.app.state.resources
    return resources


async def get_settings(resources: ResourcesDep) -> Settings:
    return resources.settings


async def get_redis(resources: ResourcesDep) -> Redis:
    return resources.redis


async def get_leases(resources: ResourcesDep) -> LeaseManager:
    return resources.leases


ResourcesDep = Annotated[Resources, Depends(get_resources)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
RedisDep = Annotated[Redis, Depends(get_redis)]
LeasesDep = Annotated[LeaseManager, Depends(get_leases)]
