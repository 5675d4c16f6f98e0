"""Request dependencies: the shared resources of the application instance, and the caller."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import Depends, Header, Path, Request

from app import logs
from app.errors import AuthError
from app.resources import Resources
from app.sessions.runner import SessionRunner
from app.sessions.store import SessionRef, SessionStore

log = logging.getLogger(__name__)


async def get_resources(request: Request) -> Resources:
    resources: Resources = request.app.state.resources
    return resources


ResourcesDep = Annotated[Resources, Depends(get_resources)]


async def get_store(resources: ResourcesDep) -> SessionStore:
    return resources.store


async def get_runner(resources: ResourcesDep) -> SessionRunner:
    return resources.runner


async def get_tenant(
    request: Request,
    resources: ResourcesDep,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> str:
    try:
        tenant = resources.api_keys.tenant(authorization)
    except AuthError as exc:
        log.warning("authentication failed: %s %s: %s", request.method, request.url.path, exc)
        raise
    logs.bind(tenant=tenant)
    return tenant


async def require_internal(
    request: Request,
    resources: ResourcesDep,
    x_internal_secret: Annotated[str | None, Header(include_in_schema=False)] = None,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> None:
    try:
        resources.internal_secret.check(x_internal_secret, authorization)
    except AuthError as exc:
        log.warning("internal authentication failed: %s %s: %s",
                    request.method, request.url.path, exc)  # fmt: skip
        raise


StoreDep = Annotated[SessionStore, Depends(get_store)]
RunnerDep = Annotated[SessionRunner, Depends(get_runner)]
TenantDep = Annotated[str, Depends(get_tenant)]

SessionIdPath = Annotated[
    str,
    Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:\-]+$",
         description="1-128 characters of A-Z a-z 0-9 . _ : -"),
]  # fmt: skip


async def get_session(session_id: SessionIdPath, tenant: TenantDep) -> SessionRef:
    logs.bind(session=session_id)
    return SessionRef.of(tenant, session_id)


SessionDep = Annotated[SessionRef, Depends(get_session)]
