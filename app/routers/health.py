"""Liveness (the process answers) and readiness (Redis answers and the scripts are loaded)."""

from __future__ import annotations

from fastapi import APIRouter

from app.deps import ResourcesDep
from app.errors import RedisUnavailableError
from app.routers.models.internal import StatusOut
from app.routers.models.problem import answers

router = APIRouter(tags=["health"])


@router.get(
    "/healthz",
    summary="Liveness",
    description="The process answers.",
    response_model=None,
    responses=answers(StatusOut),
)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness",
    description="Redis answers and the scripts are loaded; else 503.",
    response_model=None,
    responses=answers(StatusOut, 503),
)
async def readyz(resources: ResourcesDep) -> dict[str, str]:
    try:
        await resources.redis.ping()
        await resources.load_scripts()
    except Exception as exc:
        raise RedisUnavailableError(f"not ready: {type(exc).__name__}") from None
    return {"status": "ready"}
