"""Sessions as the routers see them: submit a message, wait for a run, and the worker's
side of holding sessions (adopting holds, stop signals, wake-ups, shutdown).

An admission whose reply does not come within the Redis timeout has an unknown outcome:
the script may have run. The request is answered 503 saying so (a retry with the same
idempotency key is safe: it finds the run), and the admission is resolved in the
background as soon as Redis answers: if it ran, it stands (and if it granted this worker
the session, this worker runs it, so a granted run is never left without a holder); if
it did not, a tombstone under its run id makes sure it never will.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

from app.errors import (
    AdmissionUnknownError,
    QueueFullError,
    RedisUnavailableError,
    ServiceClosingError,
    SessionBusyError,
)
from app.sessions import steering
from app.sessions.admission import Admissions
from app.sessions.holder import HolderDeps, hold
from app.sessions.ids import new_run_id
from app.sessions.index import SessionIndex
from app.sessions.models import Admission, NewRun, Run, StartedHold
from app.sessions.ref import SessionRef
from app.tasks import cancel_and_wait

log = logging.getLogger(__name__)

EARLY_SIGNALS_KEPT = 10_000
CLOSE_TIMEOUT = 5.0  # after interrupting, how long runs may take to record it
RECONCILE_FOR = 30.0  # how long an admission with an unknown outcome is re-sent
RECONCILE_PAUSE = 0.5


@dataclass(frozen=True, slots=True)
class Submitted:
    admission: Admission
    local: bool
    """This worker runs the new run now: its end arrives in memory."""


class Sessions:
    def __init__(
        self, admissions: Admissions, index: SessionIndex, deps: HolderDeps, *, deadline: float
    ) -> None:
        self._admissions = admissions
        self._index = index
        self._deps = deps
        self._deadline = deadline
        self._tasks: set[asyncio.Task[None]] = set()
        self._early: OrderedDict[str, str] = OrderedDict()
        self._wakes: OrderedDict[str, None] = OrderedDict()
        self._closing = False
        deps.early_stop = self._early_stop
        deps.early_wake = self._early_wake
        deps.closing = lambda: self._closing

    @property
    def closing(self) -> bool:
        return self._closing

    async def submit(self, session: SessionRef, new: NewRun) -> Submitted:
        if self._closing:
            raise ServiceClosingError("this worker is shutting down; other workers admit")
        metrics = self._deps.metrics
        run_id, token = new_run_id(session.tenant, session.session_id), secrets.token_hex(16)
        try:
            async with asyncio.timeout(self._deadline):
                admission = await self._admissions.admit(session, new, run_id, token)
        except (SessionBusyError, QueueFullError) as refused:
            outcome = "rejected" if isinstance(refused, SessionBusyError) else "queue_full"
            metrics.admissions.labels(outcome).inc()
            log.debug("admission %s: session=%s", outcome, session.session_id)
            raise
        except (TimeoutError, RedisUnavailableError) as exc:
            self._spawn(self._reconcile(session, new, run_id, token))
            raise AdmissionUnknownError(run_id) from exc
        outcome = "duplicate" if admission.duplicate else "started" if admission.start else "queued"
        metrics.admissions.labels(outcome).inc()
        if not admission.duplicate:
            metrics.queue_depth.observe(admission.queue_position)
        log.debug(
            "admission %s: session=%s run=%s position=%d",
            outcome,
            session.session_id,
            admission.run_id,
            admission.queue_position,
        )
        local = False
        if admission.start is not None:
            local = admission.start.first_run.run_id == admission.run_id
            self.adopt(session, admission.start)
        return Submitted(admission, local)

    async def wait(self, session: SessionRef, run_id: str, timeout: float, *, local: bool) -> Run:
        """The run once ended, or as it is when `timeout` seconds have passed."""
        local = local or run_id in self._deps.active
        return await self._deps.waiters.wait(session, run_id, timeout, local=local)

    def adopt(self, session: SessionRef, started: StartedHold) -> None:
        """Become the session's holder: run its runs in a task of this worker."""
        self._spawn(hold(self._deps, session, started))

    async def take_over(self, session: SessionRef) -> Literal["taken", "busy", "idle"]:
        """Take a session whose holder is gone but whose work is not."""
        if self._closing:
            return "busy"
        [outcome] = await self._index.recover([session])
        if outcome is None:
            return "idle"
        if not isinstance(outcome, StartedHold):
            return "busy"
        log.warning(
            "session %s: taken over from a lost or departed holder (fence %s)",
            session.session_id,
            outcome.first_run.fence,
        )
        self.adopt(session, outcome)
        return "taken"

    def on_wake(self, payload: str) -> None:
        """A departing worker released a session with runs queued: try to take it."""
        message = json.loads(payload)
        session = SessionRef.of(str(message["tenant"]), str(message["session_id"]))
        self._spawn(self._take_over_quietly(session))

    def on_control(self, payload: str) -> None:
        """A stop signal for a run, or a message steered into it, published by any worker."""
        message = json.loads(payload)
        run_id = str(message["run_id"])
        if "steer" in message:  # a message steered into the run (`steering`)
            steered = self._deps.active.get(run_id)
            if steered is not None:
                index, text = int(message["steer"]["index"]), str(message["steer"]["text"])
                steering.deliver(self._deps.reads, steered, index, text)
            return
        reason = str(message["reason"])
        active = self._deps.active.get(run_id)
        if active is not None:
            active.stop(reason)
            return
        if reason == "wake":  # for a holder about to wait for this collect run
            self._wakes[run_id] = None
            while len(self._wakes) > EARLY_SIGNALS_KEPT:
                self._wakes.popitem(last=False)
            return
        self._early[run_id] = reason
        while len(self._early) > EARLY_SIGNALS_KEPT:
            self._early.popitem(last=False)

    async def close(self, grace: float) -> None:
        """Shut down: admit nothing more, let running runs finish for `grace` seconds, then
        interrupt the rest; every session is released without starting its next run, and
        another worker is woken for each one that still has runs queued."""
        self._closing = True
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace)
        for active in list(self._deps.active.values()):
            active.stop("interrupted:shutdown")
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=CLOSE_TIMEOUT)
            for task in pending:
                await cancel_and_wait(task)

    def _early_stop(self, run_id: str) -> str | None:
        return self._early.pop(run_id, None)

    def _early_wake(self, run_id: str) -> bool:
        return self._wakes.pop(run_id, 0) is None

    def _spawn(self, coroutine: object) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coroutine)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _take_over_quietly(self, session: SessionRef) -> None:
        try:
            await self.take_over(session)
        except RedisUnavailableError as exc:
            log.warning(
                "session %s: wake-up not honoured (%s); the sweeper will", session.session_id, exc
            )

    async def _reconcile(self, session: SessionRef, new: NewRun, run_id: str, token: str) -> None:
        """Resolve an admission whose outcome is unknown once Redis answers; run what it
        granted. Past RECONCILE_FOR, the sweeper starts a granted run that never started."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + RECONCILE_FOR
        while loop.time() < give_up and not self._closing:
            try:
                async with asyncio.timeout(self._deadline):
                    admission = await self._admissions.resolve(session, new, run_id, token)
            except (TimeoutError, RedisUnavailableError):
                await asyncio.sleep(RECONCILE_PAUSE)
                continue
            if admission is None:
                log.info("admission %s with an unknown outcome had not been made", run_id)
            elif admission.start is not None:
                log.info("admission %s with an unknown outcome: started here", run_id)
                self.adopt(session, admission.start)
            else:
                log.info("admission %s with an unknown outcome: %s", run_id, admission.status)
            return
