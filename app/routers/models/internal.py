"""The scheduler's and operators' internal endpoints, as they answer."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.routers.models.runs import RunOut
from app.sessions.models import RunStatus


class TaskAccepted(BaseModel):
    model_config = ConfigDict(extra="allow")

    execution_id: str
    run_id: str
    session_id: str
    status: RunStatus
    idempotent_replay: bool | None = None


class ExecutionRunOut(RunOut):
    """The execution's run, with the execution id."""

    execution_id: str


class DeadWebhookOut(BaseModel):
    run_id: str
    session_id: str
    tenant: str
    attempts: int
    last_error: str | None


class DeadNoticeOut(BaseModel):
    agent_id: str
    notice_id: str = Field(description="The switch's event id in the agent's event stream.")
    webhook_id: str = Field(description="The `webhook-id` every attempt carried.")
    attempts: int
    last_error: str | None
    event: dict[str, Any] = Field(description="The notice's body: the switch event.")


class WebhooksOut(BaseModel):
    webhooks: list[DeadWebhookOut] = Field(description="Completion webhooks given up on.")
    notices: list[DeadNoticeOut] = Field(
        description="Subscription-switch notices (LEASEGATE_WEBHOOK_URL) given up on."
    )


class NoticeRedeliveredOut(BaseModel):
    agent_id: str
    notice_id: str
    status: Literal["pending"]


class RedeliveredOut(BaseModel):
    run_id: str
    status: Literal["pending"]


class StandingOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    assigned: bool
    state: Literal["active", "cooling", "disabled"]
    kind: str | None
    refused_at: str | None
    until: str | None
    retry_in: float | None = Field(description="Seconds until a cooling one is a candidate.")
    refusals: dict[str, int]


class SwitchOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    from_: str | None = Field(alias="from")
    to: str | None
    at: str
    reason: str


class AgentOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    agent_id: str
    subscription: str | None = Field(description="The assigned subscription.")
    subscriptions: list[StandingOut]
    switch_count: int
    last_switch: SwitchOut | None


class SwitchResultOut(BaseModel):
    switched: bool
    from_: str | None = Field(alias="from")
    to: str | None
    reason: str
    retry_in: float | None = Field(default=None, description="`no_alternative`: seconds.")


class EnabledOut(BaseModel):
    agent_id: str
    subscription_id: str
    was: Literal["active", "cooling", "disabled"]


class AgentEventsOut(BaseModel):
    events: list[dict[str, Any]] = Field(description="Newest first; each with its stream `id`.")


class StatusOut(BaseModel):
    status: str


class CapacityOut(BaseModel):
    resources: list[dict[str, Any]] = Field(
        description="Each capped resource: its cap, holders (run, tenant, worker, since) and "
        "waiters in grant order."
    )
