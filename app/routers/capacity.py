"""GET /internal/capacity: what is waiting for what, behind the internal secret."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.capacity.view import capacity_view
from app.deps import InternalDep
from app.routers.models.internal import CapacityOut
from app.routers.models.problem import answers

router = APIRouter(prefix="/internal", tags=["internal"])


@router.get(
    "/capacity",
    summary="Read capacity holders and waiters",
    response_model=None,
    responses=answers(CapacityOut),
)
async def get_capacity(resources: InternalDep) -> dict[str, Any]:
    """Each capped resource (fleet, tenants, agents, subscriptions): cap, holders (run,
    tenant, worker, since), waiters in grant order."""
    return {"resources": await capacity_view(resources.redis, resources.capacity.caps)}
