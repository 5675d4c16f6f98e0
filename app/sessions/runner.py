"""The holder side of a session: run its runs one after another, stop them on request.

The worker whose admission was granted the session lease runs the session's runs in a
loop (`_hold`), never by recursion and never by handing the lease to another owner. After
each run, one script records the outcome and pops the next queued run, or releases the
session if none is queued, so a message that arrives at that instant is either popped by
this holder or is granted the lease itself.

Stop, cancel and interrupt reach the holder from any worker over the control channel;
the heartbeat reads the same request from Redis, so a lost signal is honoured within one
heartbeat. A reset, or a lease lost any other way, makes every later write of this holder
stale: it stops the run and leaves the session alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal

from app import logs
from app.agents import AgentRegistry, AgentRequest
from app.errors import (
    AgentFailedError,
    LeaseLostError,
    LeaseNotOwnedError,
    QueueFullError,
    RedisUnavailableError,
    ServiceClosingError,
    SessionBusyError,
    SubscriptionFailureError,
)
from app.locks import Lease, LeaseManager
from app.metrics import Metrics
from app.sessions.deltas import DeltaBuffer
from app.sessions.models import Admission, NewRun, Run, RunStatus, StartedHold
from app.sessions.store import AfterFinish, Finished, SessionRef, SessionStore
from app.subscriptions.switcher import Subscriptions
from app.tasks import cancel_and_wait

log = logging.getLogger(__name__)

# Signals that arrive before this worker has registered the run they name (the admission
# reply and a stop can cross) are kept briefly, by run id.
EARLY_SIGNALS_KEPT = 10_000
FINISH_RETRY_DELAY = 0.1
CLOSE_TIMEOUT = 5.0  # after interrupting, how long runs may take to record it
WAIT_RECHECK = 1.0

STOP_STATUS = {
    "cancelled": RunStatus.CANCELLED,
    "interrupted": RunStatus.INTERRUPTED,
    "timed_out": RunStatus.TIMED_OUT,
}


@dataclass(slots=True)
class ActiveRun:
    run: Run
    task: asyncio.Task[None] | None = None
    parts: list[str] = field(default_factory=list)
    stop_reason: str | None = None
    subscription: str | None = None
    deltas: DeltaBuffer | None = None

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        if self.task is not None:
            self.task.cancel()


class SessionRunner:
    def __init__(
        self,
        store: SessionStore,
        leases: LeaseManager,
        agents: AgentRegistry,
        subscriptions: Subscriptions,
        metrics: Metrics,
    ) -> None:
        self._store = store
        self._leases = leases
        self._agents = agents
        self._subscriptions = subscriptions
        self._metrics = metrics
        self._holders: set[asyncio.Task[None]] = set()
        self._active: dict[str, ActiveRun] = {}
        self._early_signals: OrderedDict[str, str] = OrderedDict()
        self._finish_waiters: dict[str, set[asyncio.Event]] = {}
        self._closing = False

    async def submit(self, session: SessionRef, new: NewRun) -> Admission:
        if self._closing:
            raise ServiceClosingError("this worker is shutting down; other workers admit")
        try:
            admission = await self._store.admit(session, new)
        except (SessionBusyError, QueueFullError) as refused:
            outcome = "rejected" if isinstance(refused, SessionBusyError) else "queue_full"
            self._metrics.admissions.labels(outcome).inc()
            log.info("admission %s: session=%s", outcome, session.session_id)
            raise
        outcome = "duplicate" if admission.duplicate else "started" if admission.start else "queued"
        self._metrics.admissions.labels(outcome).inc()
        if not admission.duplicate:
            self._metrics.queue_depth.observe(admission.queue_position)
        log.info("admission %s: session=%s run=%s position=%d", outcome, session.session_id,
                 admission.run_id, admission.queue_position)  # fmt: skip
        if admission.start is not None:
            self.adopt(session, admission.start)
        return admission

    @property
    def closing(self) -> bool:
        return self._closing

    def adopt(self, session: SessionRef, hold: StartedHold) -> None:
        """Become the session's holder: run its runs in a task of this worker."""
        lease = Lease(
            session.keys.lease, hold.token, hold.fence, self._store.lease_ttl,
            hold.granted_at + self._store.lease_ttl,
        )  # fmt: skip
        task = asyncio.create_task(self._hold(session, lease, hold.first_run))
        self._holders.add(task)
        task.add_done_callback(self._holders.discard)

    async def take_over(self, session: SessionRef) -> Literal["taken", "busy", "idle"]:
        """Take a session whose holder is gone but whose work is not."""
        if self._closing:
            return "busy"
        hold = await self._store.recover(session)
        if hold is None:
            return "idle"
        if not isinstance(hold, StartedHold):
            return "busy"
        log.warning("session %s: taken over from a lost or departed holder (fence %d)",
                    session.session_id, hold.fence)  # fmt: skip
        self.adopt(session, hold)
        return "taken"

    def on_wake(self, payload: str) -> None:
        """A departing worker released a session with runs queued: try to take it."""
        message = json.loads(payload)
        session = SessionRef.of(str(message["tenant"]), str(message["session_id"]))
        task = asyncio.create_task(self._take_over_quietly(session))
        self._holders.add(task)
        task.add_done_callback(self._holders.discard)

    async def _take_over_quietly(self, session: SessionRef) -> None:
        try:
            await self.take_over(session)
        except RedisUnavailableError as exc:
            log.warning("session %s: wake-up not honoured (%s); the sweeper will",
                        session.session_id, exc)  # fmt: skip

    async def wait(self, session: SessionRef, run_id: str, timeout: float) -> Run:
        """The run once terminal, or as it is when `timeout` seconds have passed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        event = asyncio.Event()
        waiters = self._finish_waiters.setdefault(run_id, set())
        waiters.add(event)
        try:
            while True:
                event.clear()  # before reading, so a finish after the read still wakes us
                run = await self._store.get_run(session, run_id)
                remaining = deadline - loop.time()
                if run.status.terminal or remaining <= 0:
                    return run
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(remaining, WAIT_RECHECK)):
                        await event.wait()
        finally:
            waiters.discard(event)
            if not waiters:
                self._finish_waiters.pop(run_id, None)

    def on_control(self, payload: str) -> None:
        """A stop signal for a run, published by any worker."""
        message = json.loads(payload)
        run_id, reason = str(message["run_id"]), str(message["reason"])
        active = self._active.get(run_id)
        if active is not None:
            active.stop(reason)
            return
        self._early_signals[run_id] = reason
        while len(self._early_signals) > EARLY_SIGNALS_KEPT:
            self._early_signals.popitem(last=False)

    def on_finished(self, run_id: str) -> None:
        for event in self._finish_waiters.get(run_id, ()):
            event.set()

    async def close(self, grace: float) -> None:
        """Shut down: admit nothing more, let running runs finish for `grace` seconds, then
        interrupt the rest; every session is released without taking its next run, and
        another worker is woken for each one that still has runs queued."""
        self._closing = True
        if self._holders:
            await asyncio.wait(set(self._holders), timeout=grace)
        for active in list(self._active.values()):
            active.stop("interrupted")
        if self._holders:
            _, pending = await asyncio.wait(set(self._holders), timeout=CLOSE_TIMEOUT)
            for task in pending:
                await cancel_and_wait(task)

    async def _hold(self, session: SessionRef, lease: Lease, first: Run) -> None:
        """The holder's loop: one run after another until the session is released."""
        logs.replace(tenant=session.tenant, session=session.session_id, fence=lease.fence)
        run: Run | None = first
        while run is not None:
            outcome = await self._execute(session, lease, run)
            if outcome is None:
                return
            after = await self._finish(session, lease, run, outcome)
            if after is None:
                return
            run = after.next_run
            if run is None and after.queued:
                await self._wake_another(session, after.queued)

    async def _wake_another(self, session: SessionRef, queued: int) -> None:
        log.info("session %s released on shutdown with %d runs queued; waking another worker",
                 session.session_id, queued)  # fmt: skip
        payload = json.dumps({"tenant": session.tenant, "session_id": session.session_id})
        try:
            await self._store.publish_wake(payload)
        except RedisUnavailableError:
            log.warning("session %s: wake-up not sent; the sweeper will take it",
                        session.session_id)  # fmt: skip

    async def _execute(self, session: SessionRef, lease: Lease, run: Run) -> Finished | None:
        """Run the agent under the lease's heartbeat; None when the lease was lost."""
        logs.bind(run=run.run_id)
        started = asyncio.get_running_loop().time()
        active = ActiveRun(run)
        active.deltas = DeltaBuffer(
            functools.partial(self._store.delta, session, lease, run.run_id)
        )
        self._active[run.run_id] = active
        active.task = asyncio.create_task(self._run_agent(session, active))
        early = self._early_signals.pop(run.run_id, None) or run.cancel_requested
        if early is not None or self._closing:
            active.stop(early or "interrupted")

        def on_lost(_: LeaseLostError) -> None:
            active.stop("lost")

        heartbeat = self._leases.heartbeat(
            lease, on_lost, renew=functools.partial(self._renew, session, lease)
        )
        heartbeat.start()
        deadline = None
        if run.timeout_seconds is not None:
            loop = asyncio.get_running_loop()
            deadline = loop.call_later(run.timeout_seconds, active.stop, "timed_out")
        try:
            await asyncio.wait([active.task])
        finally:
            if deadline is not None:
                deadline.cancel()
            active.task.cancel()  # only does something when this holder itself is cancelled
            await heartbeat.stop()
            self._active.pop(run.run_id, None)
        unsent = await active.deltas.drain()
        if active.stop_reason in ("lost", "reset") or heartbeat.lost is not None:
            self._metrics.stale_writes.inc()
            log.warning("session %s: run %s ends without writing: lease lost (fence %d)",
                        session.session_id, run.run_id, lease.fence)  # fmt: skip
            return None
        outcome = self._outcome(active, unsent)
        elapsed = asyncio.get_running_loop().time() - started
        self._metrics.run_duration.labels(outcome.status.value).observe(elapsed)
        return outcome

    def _outcome(self, active: ActiveRun, unsent: str) -> Finished:
        assert active.task is not None
        output = "".join(active.parts)
        subscription = active.subscription or ""
        if active.task.cancelled():
            status = STOP_STATUS.get(active.stop_reason or "", RunStatus.CANCELLED)
            return Finished(status, output, f"run {status.value}", subscription, unsent)
        error = active.task.exception()
        if error is not None:
            log.warning("run %s failed: %s", active.run.run_id, error)
            message = str(error) or type(error).__name__
            return Finished(RunStatus.FAILED, output, message, subscription, unsent)
        return Finished(RunStatus.COMPLETED, output, "", subscription, unsent)

    async def _run_agent(self, session: SessionRef, active: ActiveRun) -> None:
        """Run the agent; on a refused subscription, have it switched (once per burst, by
        whichever worker wins the agent's switch lease) and retry once on the current one."""
        run = active.run
        try:
            await self._stream(session, active, await self._subscriptions.current(run.agent_id))
        except SubscriptionFailureError as failure:
            if active.parts or active.subscription is None:
                raise  # a reply already under way cannot be retried
            result = await self._subscriptions.handle_failure(
                run.agent_id, failure.subscription_id or active.subscription, failure.kind
            )
            if result.reason == "no_alternative":
                raise AgentFailedError(
                    f"{failure}; no viable subscription to switch to"
                ) from failure
            try:
                await self._stream(session, active, result.to_subscription)
            except SubscriptionFailureError as again:
                raise AgentFailedError(f"{again} (retried after: {failure})") from again

    async def _stream(
        self, session: SessionRef, active: ActiveRun, subscription: str | None
    ) -> None:
        run = active.run
        active.subscription = subscription
        request = AgentRequest(
            agent_id=run.agent_id,
            text=run.input,
            metadata=run.metadata,
            history=functools.partial(self._store.transcript_turns, session, run.generation),
            subscription=self._agents.credentials(subscription) if subscription else None,
        )
        async for delta in self._agents.get(run.agent_id).stream(request):
            active.parts.append(delta)
            if active.deltas is not None:
                active.deltas.add(delta)

    async def _renew(self, session: SessionRef, lease: Lease) -> None:
        signal = await self._store.renew(session, lease)
        if signal is not None:
            run_id, reason = signal
            active = self._active.get(run_id)
            if active is not None and active.stop_reason is None:
                log.info("session %s: stop signal for run %s read by the heartbeat",
                         session.session_id, run_id)  # fmt: skip
                active.stop(reason)

    async def _finish(
        self, session: SessionRef, lease: Lease, run: Run, outcome: Finished
    ) -> AfterFinish | None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                after = await self._store.finish(
                    session, lease, run, outcome, release=self._closing
                )
            except LeaseNotOwnedError:
                self._metrics.stale_writes.inc()
                log.warning("session %s: outcome of run %s refused: fence %d is stale",
                            session.session_id, run.run_id, lease.fence)  # fmt: skip
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
            self._metrics.runs_finished.labels(outcome.status.value).inc()
            return after
