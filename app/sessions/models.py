"""Runs and their statuses, as stored in Redis and returned by the API."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"
    TIMED_OUT = "timed_out"
    LOST = "lost"

    @property
    def terminal(self) -> bool:
        return self not in (RunStatus.QUEUED, RunStatus.RUNNING)


class BusyPolicy(StrEnum):
    ENQUEUE = "enqueue"
    INTERRUPT = "interrupt"
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class NewRun:
    """What a caller asks to run."""

    text: str
    agent_id: str
    busy_policy: BusyPolicy
    metadata: dict[str, Any] = field(default_factory=dict)
    idempotency_key: str | None = None
    timeout_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class Run:
    run_id: str
    tenant: str
    session_id: str
    status: RunStatus
    input: str
    agent_id: str
    metadata: dict[str, Any]
    generation: int
    output: str | None = None
    error: str | None = None
    created_at: int | None = None
    """Times are microseconds since the epoch on Redis' clock."""
    started_at: int | None = None
    finished_at: int | None = None
    fence: int | None = None
    worker: str | None = None
    timeout_seconds: float | None = None
    subscription: str | None = None

    attempt: int = 1

    @classmethod
    def from_record(cls, fields: dict[str, Any]) -> Run:
        """A run from its stored record (what was asked merged with how it went)."""

        def number(name: str) -> int | None:
            value = fields.get(name)
            return int(value) if value else None

        timeout_ms = fields.get("timeout_ms")
        return cls(
            run_id=fields["run_id"],
            tenant=fields["tenant"],
            session_id=fields["session_id"],
            status=RunStatus(fields["status"]),
            input=fields.get("input", ""),
            agent_id=fields.get("agent_id", ""),
            metadata=fields.get("metadata") or {},
            generation=int(fields.get("generation") or 1),
            output=fields.get("output") or None,
            error=fields.get("error") or None,
            created_at=number("created_at"),
            started_at=number("started_at"),
            finished_at=number("finished_at"),
            fence=number("fence"),
            worker=fields.get("worker") or None,
            timeout_seconds=int(timeout_ms) / 1000 if timeout_ms else None,
            subscription=fields.get("subscription") or None,
            attempt=int(fields.get("attempt") or 1),
        )

    def public(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "session_id": self.session_id,
            "status": self.status.value,
            "input": self.input,
            "output": self.output,
            "error": self.error,
            "agent_id": self.agent_id,
            "metadata": self.metadata,
            "generation": self.generation,
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "fence": self.fence,
            "worker": self.worker,
            "timeout_seconds": self.timeout_seconds,
            "subscription": self.subscription,
        }


@dataclass(frozen=True, slots=True)
class Admission:
    """The outcome of posting a message: the new run (`run` when the answer carried it:
    a duplicate's existing run), and the hold this worker must run."""

    run_id: str
    status: RunStatus
    queue_position: int
    duplicate: bool = False
    start: StartedHold | None = None
    run: Run | None = None


@dataclass(frozen=True, slots=True)
class StartedHold:
    """A session lease this worker was granted, and the first run it must execute (under
    the fence `first_run.fence`)."""

    token: str
    granted_at: float
    first_run: Run


@dataclass(frozen=True, slots=True)
class SessionView:
    session_id: str
    busy: bool
    active_run: Run | None
    queued: list[str]
    generation: int

    def public(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "state": "busy" if self.busy else "idle",
            "active_run": self.active_run.public() if self.active_run else None,
            "queued": self.queued,
            "generation": self.generation,
        }


def _iso(epoch_us: int | None) -> str | None:
    if epoch_us is None:
        return None
    return datetime.fromtimestamp(epoch_us / 1_000_000, UTC).isoformat(timespec="microseconds")
