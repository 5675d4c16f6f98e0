"""What operators read as the API answers it: workers, sessions with work, the console."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from app.routers.models.internal import AgentOut
from app.routers.models.runs import RunOut, Timestamp
from app.routers.models.sessions import HolderOut, SessionOut


class WorkerOut(BaseModel):
    worker: str = Field(description="host:pid, as a session's holder names it.")
    host: str
    pid: int | None
    version: str
    started_at: str
    last_seen: str = Field(description="Its last heartbeat (the worker's clock).")
    seen_ms_ago: int
    runs: list[str] = Field(description="The runs it holds now.")
    runs_finished: int = Field(description="Runs it has ended since it started.")
    runs_per_second: float = Field(description="Runs it ended per second, last heartbeat.")
    heartbeat_seconds: float


class WorkersOut(BaseModel):
    workers: list[WorkerOut] = Field(description="Workers alive, oldest first.")


class ActiveRunBrief(BaseModel):
    run_id: str
    status: str
    started_at: Timestamp
    age_ms: int | None = Field(description="Since it started.")


class SessionBrief(BaseModel):
    tenant: str
    session_id: str
    busy: bool = Field(description="A holder, an active run or a queue.")
    holder: HolderOut | None
    active_run: ActiveRunBrief | None
    queued: list[str] = Field(description="Run ids waiting, in order.")


class SessionsPage(BaseModel):
    sessions: list[SessionBrief]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null: done.")


class SessionDetail(SessionOut):
    model_config = ConfigDict(extra="allow")

    tenant: str
    runs: list[RunOut] = Field(description="The last 10 runs, newest first.")


class AgentsOut(BaseModel):
    agents: list[AgentOut]


class ConsoleTokenOut(BaseModel):
    token: str = Field(description="Opens GET /internal/console/stream as `?token=`.")
    expires_in: float = Field(description="Seconds it opens the stream for.")
