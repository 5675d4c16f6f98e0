"""Request dependencies: one per route, each giving the caller and what it needs.

Each resolves the application instance's shared resources from the request directly and
authenticates in the same step, so a route costs one dependency to solve.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Path, Query, Request

from app import logs
from app.console.tokens import ConsoleTokens
from app.errors import AuthError
from app.resources import Resources
from app.sessions.ref import SessionRef

log = logging.getLogger(__name__)

AuthorizationHeader = Annotated[str | None, Header(include_in_schema=False)]


@dataclass(frozen=True, slots=True)
class Caller:
    """A tenant's authenticated request."""

    resources: Resources
    tenant: str


@dataclass(frozen=True, slots=True)
class SessionCall:
    """A tenant's authenticated request about one of its sessions."""

    resources: Resources
    session: SessionRef


def resources_of(request: Request) -> Resources:
    resources: Resources = request.app.state.resources
    return resources


async def get_resources(request: Request) -> Resources:
    return resources_of(request)


def _tenant(request: Request, resources: Resources, authorization: str | None) -> str:
    try:
        tenant = resources.api_keys.tenant(authorization)
    except AuthError as exc:
        log.warning("authentication failed: %s %s: %s", request.method, request.url.path, exc)
        raise
    logs.bind(tenant=tenant)
    return tenant


async def get_caller(request: Request, authorization: AuthorizationHeader = None) -> Caller:
    resources = resources_of(request)
    return Caller(resources, _tenant(request, resources, authorization))


SessionIdPath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9._:\-]+$",
        description="1-128 characters of A-Z a-z 0-9 . _ : -",
    ),
]


async def get_session_call(
    request: Request, session_id: SessionIdPath, authorization: AuthorizationHeader = None
) -> SessionCall:
    resources = resources_of(request)
    tenant = _tenant(request, resources, authorization)
    logs.bind(session=session_id)
    return SessionCall(resources, SessionRef.of(tenant, session_id))


async def get_internal(
    request: Request,
    x_internal_secret: Annotated[str | None, Header(include_in_schema=False)] = None,
    authorization: AuthorizationHeader = None,
) -> Resources:
    """The resources, for a request that carries the internal secret."""
    resources = resources_of(request)
    try:
        resources.internal_secret.check(x_internal_secret, authorization)
    except AuthError as exc:
        log.warning(
            "internal authentication failed: %s %s: %s", request.method, request.url.path, exc
        )
        raise
    return resources


async def get_console_stream(
    request: Request,
    token: Annotated[str | None, Query(max_length=200, include_in_schema=False)] = None,
    x_internal_secret: Annotated[str | None, Header(include_in_schema=False)] = None,
    authorization: AuthorizationHeader = None,
) -> Resources:
    """The resources, for the console's stream: the internal secret in a header, or a
    short-lived token from POST /internal/console/token (an EventSource sends no headers)."""
    if x_internal_secret or authorization:
        return await get_internal(request, x_internal_secret, authorization)
    resources = resources_of(request)
    secret = resources.settings.internal_secret
    try:
        ConsoleTokens(secret.get_secret_value() if secret else None).check(token)
    except AuthError as exc:
        log.warning("console stream authentication failed: %s", exc)
        raise
    return resources


ResourcesDep = Annotated[Resources, Depends(get_resources)]
CallerDep = Annotated[Caller, Depends(get_caller)]
SessionDep = Annotated[SessionCall, Depends(get_session_call)]
InternalDep = Annotated[Resources, Depends(get_internal)]
ConsoleStreamDep = Annotated[Resources, Depends(get_console_stream)]
