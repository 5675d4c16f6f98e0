"""Putting steered messages into the inbox of the run they were steered into.

The admission script records a steered message on the running run (`steered_inputs`) and
publishes it to the holder, whichever worker that is; the holder delivers it into the
run's inbox in arrival order. A message whose publication was lost, or that arrived
before the holder had registered the run, is read back from the run's record: when a
later message finds a gap, and when the holder's renewal reports more messages than the
inbox holds. Delivery by number makes every repeat harmless.
"""

from __future__ import annotations

import asyncio
import logging

from app.errors import LeasegateError
from app.sessions.active import ActiveRun
from app.sessions.reads import Reads
from app.sessions.ref import SessionRef

log = logging.getLogger(__name__)


def deliver(reads: Reads, active: ActiveRun, index: int, text: str) -> None:
    """Message number `index` of the run arrived over pub/sub."""
    if not active.inbox.deliver(index, text):
        catch_up(reads, active, index)


def renewed(active_runs: dict[str, ActiveRun], reads: Reads, run_id: str, count: int) -> None:
    """A renewal found `count` messages steered into `run_id`, the session's active run."""
    active = active_runs.get(run_id)
    if active is not None:
        catch_up(reads, active, count)


def catch_up(reads: Reads, active: ActiveRun, count: int) -> None:
    """The run has `count` messages steered into it: read those the inbox lacks."""
    if active.inbox.delivered >= count:
        return
    if active.catching_up is not None and not active.catching_up.done():
        return  # the next renewal reports the count again if this read misses some
    active.catching_up = asyncio.create_task(_read_back(reads, active))


async def _read_back(reads: Reads, active: ActiveRun) -> None:
    run = active.run
    try:
        stored = await reads.get_run(SessionRef.of(run.tenant, run.session_id), run.run_id)
    except LeasegateError as exc:
        log.warning("run %s: steered messages not read back (%s); retried", run.run_id, exc)
        return
    for index, text in enumerate(stored.steered_inputs, start=1):
        active.inbox.deliver(index, text)
