"""A run's stop, as its holder sees it: a stop request the renewal read, and the outcome a
run ends with, by its stop, its error or by itself.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from app.errors import RunExpiredError
from app.sessions.active import ActiveRun
from app.sessions.models import RunStatus
from app.sessions.ref import SessionRef
from app.sessions.writes import Finished

if TYPE_CHECKING:
    from app.sessions.holder import HolderDeps

log = logging.getLogger("app.sessions.holder")
"""The holder's logger: a stop read and a run's failure are logged as the holder's."""

STOP_STATUS = {
    "cancelled": RunStatus.CANCELLED,
    "interrupted": RunStatus.INTERRUPTED,
    "timed_out": RunStatus.TIMED_OUT,
    "rolled_back": RunStatus.ROLLED_BACK,
    "requeued": RunStatus.QUEUED,  # put back at the head of the queue (`requeue.py`)
}


def on_stop(deps: HolderDeps, session: SessionRef, run_id: str, reason: str) -> None:
    """A stop request the renewal read (every renewal reads it again until the run ends).
    A run still going one renewal after its stop is cancelled again: a library that
    swallowed the first cancellation (seen in an HTTP client racing a connect) must not
    keep the session busy."""
    active = deps.active.get(run_id)
    if active is None or (active.task is not None and active.task.done()):
        return
    if active.stop_reason is None:
        log.info(
            "session %s: stop request for run %s read by the renewal",
            session.session_id,
            run_id,
        )
    else:
        log.warning(
            "session %s: run %s still going after its stop (%s); cancelling it again",
            session.session_id,
            run_id,
            active.stop_reason,
        )
    active.stop(reason)


def stopped_as(active: ActiveRun) -> str:
    """The status a stop asked for: stop reasons are "<status>:<who>" (cancelled:stop,
    interrupted:interrupted_by:<run>, timed_out:timeout, reset:deleted), or "lost"."""
    return (active.stop_reason or "").partition(":")[0]


def outcome(active: ActiveRun) -> Finished:
    assert active.task is not None
    output = "".join(active.parts)
    subscription = active.subscription or ""
    if active.task.cancelled():
        status = STOP_STATUS.get(stopped_as(active), RunStatus.CANCELLED)
        why = (active.stop_reason or "").partition(":")[2]
        return Finished(status, output, f"run {status.value}", subscription, reason=why)
    error = active.task.exception()
    if isinstance(error, RunExpiredError):
        return Finished(RunStatus.EXPIRED, output, str(error), subscription, reason="expired")
    if error is not None:
        log.warning("run %s failed: %s", active.run.run_id, error)
        return Finished(RunStatus.FAILED, output, str(error) or type(error).__name__, subscription)
    return Finished(RunStatus.COMPLETED, output, "", subscription)
