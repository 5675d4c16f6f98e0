"""The application factory: `uvicorn --factory app.main:create_app`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from pydantic import ValidationError

from app import logs, openapi, problems, supervision
from app.agents import AgentRegistry
from app.errors import AgentsConfigError, ConfigurationError
from app.metrics import Metrics
from app.middleware import InputGuardMiddleware, RequestIdMiddleware
from app.readiness import announce_when_ready
from app.redis.outage import install_outage_log
from app.resources import Resources
from app.routers import agents as agents_router
from app.routers import agui, capacity, events, health, internal, runs, sessions
from app.routers import console as console_router
from app.routers import metrics as metrics_router
from app.routers import operators as operators_router
from app.settings import Settings
from app.tasks import cancel_and_wait

log = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None,
    metrics: Metrics | None = None,
    agents: AgentRegistry | None = None,
) -> FastAPI:
    if settings is None:  # uvicorn's factory call: everything from the environment
        settings, agents = _configured_or_exit(agents)
    metrics = metrics if metrics is not None else Metrics()
    agents = agents if agents is not None else AgentRegistry.from_settings(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        resources = await Resources.open(settings, metrics, agents)
        app.state.resources = resources
        _announce_auth(settings)

        async def check() -> None:
            await resources.redis.ping()
            await resources.load_scripts()

        ready = asyncio.create_task(
            announce_when_ready(
                check,
                f"leasegate ready: lease ttl {settings.lease_ttl_seconds:.3g}s, "
                f"heartbeat {settings.heartbeat_interval:.3g}s",
            )
        )
        try:
            yield
        finally:
            await cancel_and_wait(ready)
            await resources.close()

    logs.configure(settings.log_level, settings.log_format)
    install_outage_log(settings.redis_url_or_default, settings.redis_warning_interval_seconds)
    app = FastAPI(title="leasegate", version="0.1.0", lifespan=lifespan)
    app.add_middleware(InputGuardMiddleware)  # inside the request id: its answers carry one
    app.add_middleware(RequestIdMiddleware)
    problems.install(app, retry_after_seconds=settings.retry_after_seconds, metrics=metrics)
    app.include_router(health.router)
    app.include_router(metrics_router.router)
    app.include_router(sessions.router)
    app.include_router(events.router)
    app.include_router(runs.router)
    app.include_router(internal.router)
    app.include_router(capacity.router)
    app.include_router(agents_router.router)
    app.include_router(agui.router)
    app.include_router(operators_router.router)
    app.include_router(console_router.router)
    openapi.install(app)
    return app


def load_configuration(agents: AgentRegistry | None = None) -> tuple[Settings, AgentRegistry]:
    """Settings and agents (unless given) from the environment; ConfigurationError says, in
    one line, what is wrong."""
    try:
        settings = Settings()
    except ValidationError as exc:
        raise ConfigurationError(_settings_problems(exc)) from None
    except ValueError as exc:  # pydantic-settings' own: a value that is not JSON, ...
        raise ConfigurationError(str(exc)) from None
    if agents is not None:
        return settings, agents
    try:
        return settings, AgentRegistry.from_settings(settings)
    except AgentsConfigError as exc:
        raise ConfigurationError(str(exc)) from None


def _configured_or_exit(agents: AgentRegistry | None) -> tuple[Settings, AgentRegistry]:
    supervision.die_with_supervisor()
    try:
        return load_configuration(agents)
    except ConfigurationError as exc:
        supervision.refuse_to_start(str(exc))


def _settings_problems(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        message = error["msg"].removeprefix("Value error, ")
        name = f"LEASEGATE_{str(error['loc'][0]).upper()}" if error["loc"] else ""
        problems.append(f"{name}: {message}" if name and name not in message else message)
    return "; ".join(problems)


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
