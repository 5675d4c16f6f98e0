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
    SUPERSEDED = "superseded"
    ROLLED_BACK = "rolled_back"
    EXPIRED = "expired"
    """Not started within the run's `start_within_seconds`."""

    @property
    def terminal(self) -> bool:
        return self not in (RunStatus.QUEUED, RunStatus.RUNNING)


class BusyPolicy(StrEnum):
    ENQUEUE = "enqueue"
    INTERRUPT = "interrupt"
    REJECT = "reject"
    LATEST = "latest"
    ROLLBACK = "rollback"
    STEER = "steer"
    COLLECT = "collect"


@dataclass(frozen=True, slots=True)
class NewRun:
    """What a caller asks to run."""

    text: str
    agent_id: str
    busy_policy: BusyPolicy | None
    """None: the session's default, else the service's."""
    metadata: dict[str, Any] = field(default_factory=dict)
    idempotency_key: str | None = None
    timeout_seconds: float | None = None
    webhook: str | None = None
    """Where to POST the run once it has ended (a completion webhook)."""
    priority: int = 5
    """0-9, higher first where runs wait for the same capacity."""
    start_within_seconds: float | None = None
    """A run not started this long after its admission ends `expired`."""
    collect_ms: int | None = None
    """`collect`: how long a collect run waits for more messages (None: the session's
    default, else 1500)."""


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
    disposition: str | None = None
    """What admission did with it: started, queued, interrupted (`interrupted_run_id`)."""
    interrupted_run_id: str | None = None
    rolled_back_run_id: str | None = None
    superseded_run_ids: list[str] = field(default_factory=list)
    reason: str | None = None
    """Who ended it, when it did not end by itself: api, stop, reset, deleted, timeout,
    shutdown, client_disconnected, interrupted_by:<run id>."""
    busy_policy: str | None = None
    priority: int = 5
    start_by: int | None = None
    """When a run not started yet ends `expired` (microseconds on Redis' clock: created_at
    + start_within_seconds); None: it may wait as long as it takes."""
    inputs: list[str] = field(default_factory=list)
    """A collect run's messages, in order (its `input` is them joined by blank lines)."""
    collect_ms: int | None = None
    steered_inputs: list[str] = field(default_factory=list)
    """Messages steered into the run while it ran, in arrival order."""
    wait_ms: int | None = None
    """A collect run its holder is to wait for: how long, as the script that returned it
    saw it (not stored)."""
    waiting_for: str | None = None
    """While a started run waits for a capacity slot (then shown `queued`): agent_capacity,
    subscription_capacity, tenant_capacity or fleet_capacity."""

    @classmethod
    def from_record(cls, fields: dict[str, Any]) -> Run:
        """A run from its stored record (what was asked merged with how it went)."""

        def number(name: str) -> int | None:
            value = fields.get(name)
            return int(value) if value else None

        timeout_ms = fields.get("timeout_ms")
        inputs = [str(text) for text in fields.get("inputs") or []]
        status = RunStatus(fields["status"])
        waiting_for = fields.get("waiting_for") if status == RunStatus.RUNNING else None
        return cls(
            run_id=fields["run_id"],
            tenant=fields["tenant"],
            session_id=fields["session_id"],
            status=RunStatus.QUEUED if waiting_for else status,
            input="\n\n".join(inputs) if inputs else fields.get("input", ""),
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
            disposition=fields.get("disposition") or None,
            interrupted_run_id=fields.get("interrupted_run_id") or None,
            rolled_back_run_id=fields.get("rolled_back_run_id") or None,
            superseded_run_ids=list(fields.get("superseded") or []),
            reason=fields.get("reason") or None,
            busy_policy=fields.get("policy") or fields.get("busy_policy") or None,
            priority=int(fields["priority"]) if fields.get("priority") not in (None, "") else 5,
            start_by=number("start_by"),
            waiting_for=waiting_for or None,
            inputs=inputs,
            collect_ms=number("collect_ms"),
            steered_inputs=[str(text) for text in fields.get("steered_inputs") or []],
            wait_ms=number("wait_ms"),
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
            "busy_policy": self.busy_policy,
            "disposition": self.disposition,
            "interrupted_run_id": self.interrupted_run_id,
            "rolled_back_run_id": self.rolled_back_run_id,
            "superseded_run_ids": self.superseded_run_ids,
            "reason": self.reason,
            "attempt": self.attempt,
            "priority": self.priority,
            "start_by": _iso(self.start_by),
            "waiting_for": self.waiting_for,
            "inputs": self.inputs,
            "collect_ms": self.collect_ms,
            "steered_inputs": self.steered_inputs,
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
    disposition: str | None = None
    interrupted_run_id: str | None = None
    superseded_run_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class StartedHold:
    """A session lease this worker was granted, and the first run it must execute (under
    the fence `first_run.fence`)."""

    token: str
    granted_at: float
    first_run: Run


@dataclass(frozen=True, slots=True)
class Holder:
    """The worker holding a busy session, as Redis knows it."""

    worker: str
    fence: int
    lease_expires_in_ms: int
    held_since: int | None

    def public(self) -> dict[str, Any]:
        return {
            "worker": self.worker,
            "fence": self.fence,
            "lease_expires_in_ms": self.lease_expires_in_ms,
            "held_since": _iso(self.held_since),
        }


@dataclass(frozen=True, slots=True)
class SessionView:
    session_id: str
    holder: Holder | None
    active_run: Run | None
    queued: list[Run]
    generation: int
    last_error: str | None
    default_busy_policy: str
    agent_state: dict[str, Any] = field(default_factory=dict)
    default_collect_ms: int | None = None
    """Shown when set by PATCH (else collect runs wait 1500 ms)."""

    def public(self) -> dict[str, Any]:
        busy = self.holder is not None or self.active_run is not None or bool(self.queued)
        return {
            "session_id": self.session_id,
            "state": "busy" if busy else "idle",
            "holder": self.holder.public() if self.holder else None,
            "active_run": self.active_run.public() if self.active_run else None,
            "queued": [run.run_id for run in self.queued],
            "queue": [
                {
                    "run_id": run.run_id,
                    "busy_policy": run.busy_policy,
                    "disposition": run.disposition,
                    "created_at": _iso(run.created_at),
                }
                for run in self.queued
            ],
            "generation": self.generation,
            "last_error": self.last_error,
            "default_busy_policy": self.default_busy_policy,
            "agent_state": self.agent_state,
        } | ({"default_collect_ms": self.default_collect_ms} if self.default_collect_ms else {})


def _iso(epoch_us: int | None) -> str | None:
    if epoch_us is None:
        return None
    return datetime.fromtimestamp(epoch_us / 1_000_000, UTC).isoformat(timespec="microseconds")
