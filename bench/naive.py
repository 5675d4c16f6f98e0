"""The naive in-process gateway the service benchmark compares leasegate with: the design
leasegate replaces, written as plainly as it usually is.

`uvicorn --factory bench.naive:create_app`. The endpoints have leasegate's shapes for
what the benchmark uses: `POST /v1/sessions/{session_id}/messages` (body `{text,
busy_policy?, metadata?}`, validated by the same pydantic model as the bare endpoint's;
202 `{run_id, session_id, status, queue_position}`, or with `?wait=S` 200 and the run once
it has ended), `GET /v1/runs/{run_id}`, `GET /v1/sessions/{session_id}`,
`POST /v1/sessions/{session_id}/stop` and `GET /readyz`. Runs execute leasegate's own echo
agent (`app.agents.echo.EchoAgent`, so `metadata.delay_ms` works the same).

Each worker process keeps everything in memory, and nothing else: a dict of busy sessions,
each with the asyncio task of its running run and an asyncio.Queue of the runs waiting
behind it, drained by one task per busy session; a dict of run records. No Redis, no
lease, no heartbeat, no sweeper, no event stream, no transcript.

Its flaw, the reason leasegate exists: all of it is per worker process. Two workers (or two
replicas) do not share sessions: two messages to one session that land on different
workers run at the same time, a stop that reaches another worker than the one running the
session finds nothing to stop, the runs of a worker that dies are lost with it, and queue
order holds only within one process. The benchmark posts every throughput and latency
message to its own session, where none of this shows, so the comparison measures only what
leasegate's guarantees cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import FastAPI, Query
from fastapi.responses import JSONResponse

from app.agents.base import AgentRequest
from app.agents.echo import EchoAgent
from bench.bare import BusyPolicy, MessageIn

QUEUE_CAP = 100
"""Queued runs per session at most (leasegate's default `LEASEGATE_QUEUE_CAP`)."""
MAX_RUNS = 200_000
"""Run records kept per worker; the oldest is forgotten beyond that."""
AGENT_ID = "echo"
TERMINAL = frozenset({"completed", "failed", "cancelled", "interrupted"})


@dataclass(slots=True)
class NaiveRun:
    run_id: str
    session_id: str
    input: str
    metadata: dict[str, Any]
    status: str = "queued"
    output: str | None = None
    error: str | None = None
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    stop_reason: str | None = None
    task: asyncio.Task[None] | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def public(self) -> dict[str, Any]:
        """Shaped like leasegate's run (its Redis-only fields are None here)."""
        return {
            "run_id": self.run_id,
            "session_id": self.session_id,
            "status": self.status,
            "input": self.input,
            "output": self.output,
            "error": self.error,
            "agent_id": AGENT_ID,
            "metadata": self.metadata,
            "generation": 1,
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "fence": None,
            "worker": str(os.getpid()),
            "timeout_seconds": None,
            "subscription": None,
        }


@dataclass(slots=True)
class NaiveSession:
    """A busy session: its running run and the runs queued behind it. An idle session has
    no entry at all."""

    queue: asyncio.Queue[NaiveRun] = field(default_factory=asyncio.Queue)
    active: NaiveRun | None = None
    drainer: asyncio.Task[None] | None = None


class Refused(Exception):
    def __init__(self, status: int, title: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.extra = status, title, detail, extra


class Gateway:
    """One worker's sessions and runs."""

    def __init__(self, queue_cap: int = QUEUE_CAP) -> None:
        self.agent = EchoAgent()
        self.queue_cap = queue_cap
        self.sessions: dict[str, NaiveSession] = {}
        self.runs: dict[str, NaiveRun] = {}

    def admit(self, session_id: str, body: MessageIn) -> tuple[NaiveRun, int]:
        """The new run and its queue position (0: it runs at once)."""
        policy = body.busy_policy or BusyPolicy.ENQUEUE
        run = NaiveRun(uuid.uuid4().hex, session_id, body.text, body.metadata)
        session = self.sessions.get(session_id)
        if session is None:
            self._remember(run)
            session = self.sessions[session_id] = NaiveSession(active=run)
            _start(run)
            session.drainer = asyncio.create_task(self._drain(session_id, session))
            return run, 0
        if policy is BusyPolicy.REJECT:
            active = session.active.run_id if session.active else None
            raise Refused(409, "Session is busy", f"session {session_id} is running a run",
                          active_run_id=active)  # fmt: skip
        if session.queue.qsize() >= self.queue_cap:
            raise Refused(429, "Queue full", f"session {session_id} has {self.queue_cap} queued")
        self._remember(run)
        if policy is BusyPolicy.INTERRUPT:
            _put_first(session.queue, run)
            if session.active is not None:
                _stop(session.active, "interrupted")
            return run, 1
        session.queue.put_nowait(run)
        return run, session.queue.qsize()

    def _remember(self, run: NaiveRun) -> None:
        self.runs[run.run_id] = run
        if len(self.runs) > MAX_RUNS:
            self.runs.pop(next(iter(self.runs)))

    async def _drain(self, session_id: str, session: NaiveSession) -> None:
        """Run the session's runs one after another, then forget the session."""
        run = session.active
        while run is not None:
            if not run.terminal:  # else stopped before its task was created
                if run.status == "queued":
                    _start(run)
                session.active = run
                run.task = asyncio.create_task(self._execute(run))
                await asyncio.wait([run.task])
            run = _next_queued(session.queue)
        del self.sessions[session_id]

    async def _execute(self, run: NaiveRun) -> None:
        parts: list[str] = []
        request = AgentRequest(agent_id=AGENT_ID, text=run.input, metadata=run.metadata)
        try:
            async for delta in self.agent.stream(request):
                parts.append(delta)
        except asyncio.CancelledError:
            status = run.stop_reason or "cancelled"
            _end(run, status, "".join(parts), f"run {status}")
            raise
        except Exception as exc:
            _end(run, "failed", "".join(parts), str(exc) or type(exc).__name__)
        else:
            _end(run, "completed", "".join(parts), None)

    def stop(self, session_id: str, reason: str = "cancelled") -> list[str]:
        """Cancel the running run and every queued one."""
        session = self.sessions.get(session_id)
        if session is None:
            return []
        cancelled = []
        while (queued := _next_queued(session.queue)) is not None:
            _end(queued, "cancelled", None, "run cancelled")
            cancelled.append(queued.run_id)
        if session.active is not None and not session.active.terminal:
            _stop(session.active, reason)
            cancelled.insert(0, session.active.run_id)
        return cancelled

    def view(self, session_id: str) -> dict[str, Any]:
        """Shaped like leasegate's session view."""
        session = self.sessions.get(session_id)
        active = session.active if session and session.active else None
        queued = [run.run_id for run in _peek(session.queue)] if session else []
        return {"session_id": session_id, "state": "busy" if session else "idle",
                "active_run": active.public() if active else None, "queued": queued,
                "generation": 1}  # fmt: skip

    async def close(self) -> None:
        drainers = [s.drainer for s in self.sessions.values() if s.drainer is not None]
        for session_id in list(self.sessions):
            self.stop(session_id, "interrupted")
        if drainers:
            await asyncio.wait(drainers, timeout=5)


def _start(run: NaiveRun) -> None:
    run.status, run.started_at = "running", time.time()


def _stop(run: NaiveRun, reason: str) -> None:
    if run.stop_reason is None:
        run.stop_reason = reason
    if run.task is not None:
        run.task.cancel()
    else:  # admitted, its task not created yet: the drainer will find it ended
        _end(run, reason, None, f"run {reason}")


def _end(run: NaiveRun, status: str, output: str | None, error: str | None) -> None:
    if run.terminal:
        return
    run.status, run.output, run.error = status, output or None, error
    run.finished_at = time.time()
    run.ended.set()


def _next_queued(queue: asyncio.Queue[NaiveRun]) -> NaiveRun | None:
    while not queue.empty():
        run = queue.get_nowait()
        if not run.terminal:
            return run
    return None


def _put_first(queue: asyncio.Queue[NaiveRun], run: NaiveRun) -> None:
    behind = _peek(queue)
    while not queue.empty():
        queue.get_nowait()
    for item in (run, *behind):
        queue.put_nowait(item)


def _peek(queue: asyncio.Queue[NaiveRun]) -> list[NaiveRun]:
    """The queued runs in order, the queue left as it was."""
    items = [queue.get_nowait() for _ in range(queue.qsize())]
    for item in items:
        queue.put_nowait(item)
    return items


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="microseconds")


def _problem(status: int, title: str, detail: str, **extra: Any) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail} | extra
    return JSONResponse(body, status_code=status, media_type="application/problem+json")


WaitQuery = Annotated[float | None, Query(gt=0, le=60)]


async def _post(
    gateway: Gateway, session_id: str, body: MessageIn, wait: float | None
) -> JSONResponse:
    try:
        run, position = gateway.admit(session_id, body)
    except Refused as refused:
        return _problem(refused.status, refused.title, refused.detail, **refused.extra)
    status = run.status
    if wait is not None and not run.terminal:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await run.ended.wait()
    if wait is not None and run.terminal:
        return JSONResponse(run.public(), status_code=200)
    return JSONResponse({"run_id": run.run_id, "session_id": session_id, "status": status,
                         "queue_position": position}, status_code=202)  # fmt: skip


def create_app() -> FastAPI:
    gateway = Gateway()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await gateway.close()

    app = FastAPI(title="naive gateway", openapi_url=None, docs_url=None, redoc_url=None,
                  lifespan=lifespan)  # fmt: skip

    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/v1/sessions/{session_id}/messages", status_code=202)
    async def post_message(
        session_id: str, body: MessageIn, wait: WaitQuery = None
    ) -> JSONResponse:
        return await _post(gateway, session_id, body, wait)

    @app.get("/v1/runs/{run_id}")
    async def get_run(run_id: str) -> JSONResponse:
        run = gateway.runs.get(run_id)
        if run is None:
            return _problem(404, "Run not found", f"no run {run_id} in this worker")
        return JSONResponse(run.public())

    @app.get("/v1/sessions/{session_id}")
    async def get_session(session_id: str) -> dict[str, Any]:
        return gateway.view(session_id)

    @app.post("/v1/sessions/{session_id}/stop")
    async def stop_session(session_id: str) -> dict[str, Any]:
        return {"session_id": session_id, "cancelled": gateway.stop(session_id)}

    return app
