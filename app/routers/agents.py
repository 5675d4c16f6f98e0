"""Agents and their subscriptions, for operators and the scheduler (internal secret)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from app.deps import InternalDep
from app.routers.models.internal import AgentEventsOut, AgentOut, EnabledOut, SwitchResultOut
from app.routers.models.params import PLAIN_INT
from app.routers.models.problem import answers

router = APIRouter(prefix="/internal", tags=["agents"])


class SubscriptionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    subscription_id: str = Field(min_length=1, max_length=64)


class FailureIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    subscription_id: str = Field(min_length=1, max_length=64)
    kind: Literal["rate_limit", "quota", "auth"]
    cooldown_seconds: float | None = Field(default=None, ge=0, strict=True)
    """The provider's wait, if it gave one; otherwise the kind's default (none for auth)."""


@router.get(
    "/agents/{agent_id}",
    summary="Read an agent's subscriptions",
    description=(
        "The assigned subscription, each one's standing, and the last switch; for an agent "
        "with a reload hook, its `gate` too."
    ),
    response_model=None,
    responses=answers(AgentOut),
)
async def get_agent(agent_id: str, resources: InternalDep) -> dict[str, Any]:
    return await resources.subscriptions.state(resources.agents.resolve(agent_id))


@router.put(
    "/agents/{agent_id}/subscription",
    summary="Assign a subscription",
    description=(
        "Make this subscription the agent's, fenced by the agent's switch lease; for an "
        "agent with a reload hook, through its reload gate (drain, reload, then assign), "
        "or, while the gate is closed, the subscription it tries next."
    ),
    response_model=None,
    responses=answers(SwitchResultOut, 409),
)
async def assign_subscription(
    agent_id: str, body: SubscriptionIn, resources: InternalDep
) -> dict[str, Any]:
    result = await resources.subscriptions.assign(agent_id, body.subscription_id)
    return result.public()


@router.post(
    "/agents/{agent_id}/subscription-failures",
    summary="Report a refused subscription",
    description="The upstream refused it: cool it down or disable it, and switch the agent.",
    response_model=None,
    responses=answers(SwitchResultOut, 409),
)
async def report_failure(agent_id: str, body: FailureIn, resources: InternalDep) -> dict[str, Any]:
    result = await resources.subscriptions.handle_failure(
        agent_id, body.subscription_id, body.kind, body.cooldown_seconds
    )
    return result.public()


@router.post(
    "/agents/{agent_id}/subscriptions/{subscription_id}/enable",
    summary="Enable a subscription",
    response_model=None,
    responses=answers(EnabledOut),
)
async def enable_subscription(
    agent_id: str, subscription_id: str, resources: InternalDep
) -> dict[str, Any]:
    """A disabled (or cooling) subscription is a candidate again at once."""
    return await resources.subscriptions.enable(resources.agents.resolve(agent_id), subscription_id)


@router.get(
    "/events",
    summary="List subscription events",
    description="Assignments, switches and refusals of every agent (or one), newest first.",
    response_model=None,
    responses=answers(AgentEventsOut),
)
async def list_events(
    resources: InternalDep,
    agent_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000), PLAIN_INT] = 100,
) -> dict[str, Any]:
    agents = [resources.agents.resolve(agent_id)] if agent_id else resources.agents.ids()
    return {"events": await resources.subscriptions.events(agents, limit)}
