"""The application factory: `uvicorn --factory app.main:create_app`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app import logs, problems
from app.agents import AgentRegistry
from app.metrics import Metrics
from app.middleware import RequestIdMiddleware
from app.resources import Resources
from app.routers import agents as agents_router
from app.routers import events, health, internal, runs, sessions
from app.routers import metrics as metrics_router
from app.settings import Settings

log = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None,
    metrics: Metrics | None = None,
    agents: AgentRegistry | None = None,
) -> FastAPI:
    settings = settings if settings is not None else Settings()
    metrics = metrics if metrics is not None else Metrics()
    agents = agents if agents is not None else AgentRegistry.from_settings(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        resources = await Resources.open(settings, metrics, agents)
        app.state.resources = resources
        log.info(
            "leasegate ready: lease ttl %.3gs, heartbeat %.3gs",
            settings.lease_ttl_seconds,
            settings.heartbeat_interval,
        )
        _announce_auth(settings)
        try:
            yield
        finally:
            await resources.close()

    logs.configure(settings.log_level, settings.log_format)
    app = FastAPI(title="leasegate", version="0.1.0", lifespan=lifespan)
    app.add_middleware(RequestIdMiddleware)
    problems.install(app, retry_after_seconds=settings.retry_after_seconds, metrics=metrics)
    app.include_router(health.router)
    app.include_router(metrics_router.router)
    app.include_router(sessions.router)
    app.include_router(events.router)
    app.include_router(runs.router)
    app.include_router(internal.router)
    app.include_router(agents_router.router)
    return app


def _announce_auth(settings: Settings) -> None:
    if not settings.api_keys:
        log.warning(
            "no LEASEGATE_API_KEYS: /v1 is open, single-tenant mode (tenant 'default'); "
            "set LEASEGATE_REQUIRE_AUTH=true to refuse this"
        )
    else:
        tenants = sorted(set(settings.api_keys.values()))
        log.info(
            "/v1 requires an API key; %d key(s) for tenants %s",
            len(settings.api_keys),
            ", ".join(tenants),
        )
    if settings.internal_secret is None:
        log.warning("no LEASEGATE_INTERNAL_SECRET: /internal endpoints are disabled (404)")
