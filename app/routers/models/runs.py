"""Runs as the API answers them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.sessions.models import RunStatus

Timestamp = str | None
"""ISO 8601 with microseconds, UTC, on Redis' clock; null until it happened."""


class RunOut(BaseModel):
    """A run: what was asked, how it went, who ran it."""

    model_config = ConfigDict(extra="allow")

    run_id: str
    session_id: str
    status: RunStatus
    input: str
    output: str | None
    error: str | None
    agent_id: str
    metadata: dict[str, Any]
    generation: int
    created_at: Timestamp
    started_at: Timestamp
    finished_at: Timestamp
    fence: int | None = Field(description="The holder's fencing token, once started.")
    worker: str | None = Field(description="host:pid of the worker that ran it.")
    timeout_seconds: float | None
    subscription: str | None
    busy_policy: str | None
    disposition: str | None = Field(description="What admission did with it.")
    interrupted_run_id: str | None
    rolled_back_run_id: str | None
    superseded_run_ids: list[str]
    reason: str | None = Field(description="Why it was stopped, when it did not end by itself.")
    attempt: int
    idempotent_replay: bool | None = Field(
        default=None, description="True: an earlier request with this idempotency key made it."
    )


class RunPage(BaseModel):
    session_id: str
    runs: list[RunOut] = Field(description="Newest first.")
    next_offset: int | None = Field(description="The `offset` of the next page; null: none.")


class Admitted(BaseModel):
    """A message admitted: its run, and what admission did with it."""

    model_config = ConfigDict(extra="allow")

    run_id: str
    session_id: str
    status: RunStatus
    queue_position: int = Field(ge=0, description="0: started at once.")
    disposition: str | None
    superseded_run_ids: list[str] | None = None
    interrupted_run_id: str | None = Field(
        default=None, description="`interrupted`: the run it stopped."
    )
    rolled_back_run_id: str | None = Field(
        default=None, description="`rolled_back`: the run it stopped."
    )
    idempotent_replay: bool | None = None


class CancelOutcome(BaseModel):
    run_id: str
    outcome: Literal["cancelled", "cancel_requested", "not_found", "already_ended"]
    status: str | None = Field(default=None, description="`already_ended`: how it ended.")


class BulkCancelOut(BaseModel):
    results: list[CancelOutcome]
