"""The holder of one session: runs its runs one after another until the session is free.

The worker whose admission (or recovery) was granted the session lease runs the session's
runs in a loop, never by recursion and never by handing the lease to another owner. After
each run, one script records the outcome and starts the next queued run, or releases the
session if none is queued, so a message that arrives at that instant is either started
by this holder or is granted the lease itself.

Stop, cancel and interrupt reach the holder from any worker over the control channel and
through the renewals. A reset, or a lease lost any other way, makes every later write of
this holder stale: it stops the run and leaves the session alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from app import logs
from app.agents import Turn
from app.errors import (
    LeaseLostError,
    LeaseNotOwnedError,
    RedisUnavailableError,
)
from app.locks import Lease
from app.metrics import Metrics
from app.sessions import steering, stops
from app.sessions.active import ActiveRun
from app.sessions.collecting import await_collect
from app.sessions.control import Control
from app.sessions.deltas import DeltaBuffer
from app.sessions.models import Run, RunStatus, StartedHold
from app.sessions.reads import Reads
from app.sessions.ref import SessionRef
from app.sessions.renewal import Held, Renewals
from app.sessions.requeue import Requeues
from app.sessions.waiters import Waiters
from app.sessions.writes import AfterFinish, Finished, HolderWrites

log = logging.getLogger(__name__)

FINISH_RETRY_DELAY = 0.1


History = Callable[[], Awaitable[list[Turn]]]


class AgentCalls(Protocol):
    """Runs a run's agent, streaming its reply into the run (`app.subscriptions.agent_call`
    does it, with the agent's subscription and its switch)."""

    async def run(self, run: Run, history: History, progress: ActiveRun) -> None: ...


class StartGate(Protocol):
    """Something a run must pass before its agent starts: a capacity slot, an agent's
    reload gate. `admit` waits (the run's stop, cancel or timeout end the wait) until the
    run may start and stays entered for the run's whole length; raising `RunExpiredError`
    ends the run `expired`. Gates are entered in one fixed order (`HolderDeps.gates`), so
    no two runs can each hold what the other waits for."""

    def admit(
        self, run: Run, progress: ActiveRun
    ) -> contextlib.AbstractAsyncContextManager[None]: ...


@dataclass(slots=True)
class HolderDeps:
    """What every holder of a worker shares."""

    writes: HolderWrites
    renewals: Renewals
    calls: AgentCalls
    reads: Reads
    control: Control
    waiters: Waiters
    metrics: Metrics
    lease_ttl: float
    active: dict[str, ActiveRun]
    early_stop: Callable[[str], str | None]
    """The stop signal that reached this worker before the run it names started here."""
    closing: Callable[[], bool]
    early_wake: Callable[[str], bool] = lambda _: False
    """Whether a wake-up for a holder waiting for this collect run reached this worker
    before the holder began to wait (`collecting`)."""
    gates: list[StartGate] = field(default_factory=list)
    requeues: Requeues | None = None
    """Writes a run stopped as "requeued:<why>" back at the head of its queue."""


async def hold(deps: HolderDeps, session: SessionRef, hold: StartedHold) -> None:
    """Run the session's runs, from `hold.first_run`, until the session is released."""
    first = hold.first_run
    lease = Lease(
        session.keys.lease,
        hold.token,
        first.fence or 0,
        deps.lease_ttl,
        hold.granted_at + deps.lease_ttl,
    )
    current: list[ActiveRun] = []

    on_stop = functools.partial(stops.on_stop, deps, session)

    def on_lost(_: LeaseLostError) -> None:
        for active in current:
            active.stop("lost")

    on_steered = functools.partial(steering.renewed, deps.active, deps.reads)
    held = Held(session, lease, on_stop, on_lost, on_steered=on_steered)
    deps.renewals.add(held)
    logs.replace(tenant=session.tenant, session=session.session_id, fence=lease.fence)
    try:
        run: Run | None = first
        while run is not None:
            if run.wait_ms is not None:  # a collect run still collecting
                run = await await_collect(deps, session, held, run, current)
                continue
            lease.fence = run.fence or lease.fence
            outcome = await _execute(deps, session, held, run, current)
            if outcome is None:
                deps.waiters.wake(run.run_id)
                return
            after = await _finish(deps, session, lease, run, outcome)
            if after is None:
                deps.waiters.wake(run.run_id)
                return
            if after.ended.status.terminal:
                deps.waiters.deliver(after.ended)
            run = after.next_run
            if run is None and after.queued:
                await _wake_another(deps, session, after.queued)
    finally:
        deps.renewals.discard(held)


async def _execute(
    deps: HolderDeps, session: SessionRef, held: Held, run: Run, current: list[ActiveRun]
) -> Finished | None:
    """Run the agent while the lease is renewed; None when the lease was lost."""
    logs.bind(run=run.run_id, fence=held.lease.fence)
    loop = asyncio.get_running_loop()
    started = loop.time()
    active = ActiveRun(run)
    active.read_state = functools.partial(deps.reads.agent_state, session)
    active.deltas = DeltaBuffer(
        functools.partial(deps.writes.emit, session, held.lease, run.run_id)
    )
    deps.active[run.run_id] = active
    current[:] = [active]
    history = functools.partial(deps.reads.history, session)
    active.task = asyncio.create_task(_run_agent(deps, held, run, history, active))
    early = deps.early_stop(run.run_id)
    if held.lost is not None:
        active.stop("lost")
    elif early is not None or deps.closing():
        active.stop(early or "interrupted:shutdown")
    deadline = None
    if run.timeout_seconds is not None:
        deadline = loop.call_later(run.timeout_seconds, active.stop, "timed_out:timeout")
    try:
        await asyncio.wait([active.task])
    finally:
        if deadline is not None:
            deadline.cancel()
        active.task.cancel()  # only does something when this holder itself is cancelled
        deps.active.pop(run.run_id, None)
        current.clear()
    await active.deltas.drain()
    if stops.stopped_as(active) in ("lost", "reset") or held.lost is not None:
        deps.metrics.stale_writes.inc()
        log.warning(
            "session %s: run %s ends without writing: lease lost (fence %d)",
            session.session_id,
            run.run_id,
            held.lease.fence,
        )
        return None
    outcome = dataclasses.replace(stops.outcome(active), steered_read=active.inbox.read)
    deps.metrics.run_duration.labels(outcome.status.value).observe(loop.time() - started)
    return outcome


async def _run_agent(
    deps: HolderDeps, held: Held, run: Run, history: History, active: ActiveRun
) -> None:
    """Pass the run's start gates, then run its agent; the start is confirmed (a holder
    that dies after it ends the run `lost` rather than starting it again) only once every
    gate let the run through."""
    async with contextlib.AsyncExitStack() as gates:
        for gate in deps.gates:
            await gates.enter_async_context(gate.admit(run, active))
        deps.renewals.confirm(held, run.run_id)
        await deps.calls.run(run, history, active)


async def _finish(
    deps: HolderDeps, session: SessionRef, lease: Lease, run: Run, outcome: Finished
) -> AfterFinish | None:
    loop = asyncio.get_running_loop()
    write = deps.writes.finish
    if outcome.status is RunStatus.QUEUED and deps.requeues is not None:
        write = deps.requeues.requeue
    while True:
        try:
            after = await write(session, lease, run, outcome, release=deps.closing())
        except LeaseNotOwnedError:
            deps.metrics.stale_writes.inc()
            log.warning(
                "session %s: outcome of run %s refused: fence %d is stale",
                session.session_id,
                run.run_id,
                lease.fence,
            )
            return None
        except RedisUnavailableError:
            if loop.time() + FINISH_RETRY_DELAY >= lease.valid_until - lease.ttl / 5:
                log.error(
                    "session %s: outcome of run %s not recorded, Redis unreachable; "
                    "the run will be recovered as lost",
                    session.session_id,
                    run.run_id,
                )
                return None
            await asyncio.sleep(FINISH_RETRY_DELAY)
            continue
        if outcome.status.terminal:
            deps.metrics.runs_finished.labels(outcome.status.value).inc()
        return after


async def _wake_another(deps: HolderDeps, session: SessionRef, queued: int) -> None:
    log.info(
        "session %s released on shutdown with %d runs queued; waking another worker",
        session.session_id,
        queued,
    )
    try:
        await deps.control.wake(session)
    except RedisUnavailableError:
        log.warning("session %s: wake-up not sent; the sweeper will take it", session.session_id)
