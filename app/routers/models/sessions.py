"""Sessions as the API answers them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.routers.models.runs import RunOut, Timestamp


class HolderOut(BaseModel):
    worker: str = Field(description="host:pid of the worker holding the session's lease.")
    fence: int
    lease_expires_in_ms: int | None
    held_since: Timestamp


class QueuedOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    run_id: str
    busy_policy: str | None
    disposition: str | None
    created_at: Timestamp


class SessionOut(BaseModel):
    """A session's state: who holds it, what runs, what waits."""

    model_config = ConfigDict(extra="allow")

    session_id: str
    state: Literal["idle", "busy"]
    holder: HolderOut | None = Field(
        description="null while idle, or while a dead holder's lease runs out."
    )
    active_run: RunOut | None
    queued: list[str] = Field(description="Run ids waiting, in order.")
    queue: list[QueuedOut]
    generation: int
    last_error: str | None
    default_busy_policy: str
    agent_state: dict[str, Any] = Field(description="The agent's state kept with the session.")


class TurnOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    text: str | None = None
    run_id: str | None = None


class TranscriptOut(BaseModel):
    session_id: str
    generation: int
    turns: list[TurnOut] | None = Field(default=None, description="Unless `format=ag-ui`.")
    messages: list[dict[str, Any]] | None = Field(
        default=None, description="`format=ag-ui`: the conversation as AG-UI messages."
    )


class StoppedOut(BaseModel):
    session_id: str
    cancelled: list[str]
    kept: list[str]


class DeletedOut(BaseModel):
    session_id: str
    deleted: bool
    cancelled: list[str]


class ResetOut(BaseModel):
    session_id: str
    generation: int
    cancelled: list[str]
