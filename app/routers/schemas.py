"""Request bodies of the HTTP API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.sessions.models import BusyPolicy

MAX_START_WITHIN = 7 * 24 * 3600.0
MIN_COLLECT_MS, MAX_COLLECT_MS = 10, 60_000

MetadataField = dict[str, Any]
"""Free JSON for the agent; its size is checked where it is serialised, at admission."""


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=32_000)
    busy_policy: BusyPolicy | None = None
    agent_id: str | None = Field(default=None, min_length=1, max_length=64)
    metadata: MetadataField = Field(default_factory=dict)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)
    webhook: str | None = Field(
        default=None, min_length=1, max_length=2000, description="POSTed when the run ends."
    )
    priority: int = Field(
        default=5, ge=0, le=9, strict=True, description="Higher first for capacity."
    )
    start_within_seconds: float | None = Field(
        default=None,
        gt=0,
        le=MAX_START_WITHIN,
        strict=True,
        description="Not started by then: `expired`.",
    )
    collect_ms: int | None = Field(
        default=None,
        strict=True,
        ge=MIN_COLLECT_MS,
        le=MAX_COLLECT_MS,
        description="`collect`: how long to wait for more messages (default: the session's).",
    )


class BulkCancelIn(BaseModel):
    """Either `run_ids`, or a `session_id` with the `status` of the runs to cancel."""

    model_config = ConfigDict(extra="forbid")

    run_ids: list[str] | None = Field(default=None, min_length=1, max_length=100)
    session_id: str | None = Field(
        default=None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:\-]+$"
    )
    status: Literal["queued", "running", "all"] = "all"

    @model_validator(mode="after")
    def _one_selection(self) -> BulkCancelIn:
        if (self.run_ids is None) == (self.session_id is None):
            raise ValueError("give either run_ids or session_id")
        return self


class SessionDefaultsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    busy_policy: BusyPolicy | None = None
    collect_ms: int | None = Field(default=None, ge=MIN_COLLECT_MS, le=MAX_COLLECT_MS, strict=True)

    @model_validator(mode="after")
    def _something(self) -> SessionDefaultsIn:
        if self.busy_policy is None and self.collect_ms is None:
            raise ValueError("give busy_policy, collect_ms or both")
        return self
