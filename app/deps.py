"""Request dependencies: the shared resources of the application instance, and the caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request

from app.resources import Resources
from app.sessions.runner import SessionRunner
from app.sessions.store import SessionRef, SessionStore

DEFAULT_TENANT = "default"


async def get_resources(request: Request) -> Resources:
    resources: Resources = request.app.state.resources
    return resources


ResourcesDep = Annotated[Resources, Depends(get_resources)]


async def get_store(resources: ResourcesDep) -> SessionStore:
    return resources.store


async def get_runner(resources: ResourcesDep) -> SessionRunner:
    return resources.runner


async def get_tenant() -> str:
    return DEFAULT_TENANT


StoreDep = Annotated[SessionStore, Depends(get_store)]
RunnerDep = Annotated[SessionRunner, Depends(get_runner)]
TenantDep = Annotated[str, Depends(get_tenant)]

SessionIdPath = Annotated[
    str,
    Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:\-]+$",
         description="1-128 characters of A-Z a-z 0-9 . _ : -"),
]  # fmt: skip


async def get_session(session_id: SessionIdPath, tenant: TenantDep) -> SessionRef:
    return SessionRef.of(tenant, session_id)


SessionDep = Annotated[SessionRef, Depends(get_session)]
