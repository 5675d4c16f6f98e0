"""One run's AG-UI events, from the session's event stream, on any worker.

The stream is read from the position just before the run's admission, so none of the
run's events is missed, whichever worker (or replica) runs it. While the stream is quiet
the run's record is looked at as well: a run whose events are gone from the stream (it
keeps the last 1,000 of a session) still ends its AG-UI stream, with its reply.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from ag_ui.core import BaseEvent

from app.agui.translate import RunTranslator
from app.errors import RedisUnavailableError, RunNotFoundError
from app.redis.pubsub import PubSubHub
from app.sessions.models import Run
from app.sessions.reads import Reads
from app.sessions.ref import SessionRef
from app.sessions.tail import tail

log = logging.getLogger(__name__)

REPLAY_ALL = "0-0"


async def follow_run(
    reads: Reads,
    hub: PubSubHub,
    session: SessionRef,
    run_id: str,
    *,
    after: str,
    ended: Run | None = None,
) -> AsyncIterator[BaseEvent]:
    """The run's AG-UI events until its end. `after`: the stream position before its
    admission (REPLAY_ALL for a run admitted earlier); `ended`: the run's record if it has
    already ended (its events are then taken from the record)."""
    translator = RunTranslator(session.session_id, run_id)
    if ended is not None:
        for event in translator.catch_up(ended):
            yield event
        return
    async for batch in tail(reads, hub, session, after):
        if batch:
            events = [e for entry in batch for e in translator.translate(*entry)]
        else:
            events = await _from_record(reads, session, translator)
        for event in events:
            yield event
        if translator.done:
            return


async def _from_record(
    reads: Reads, session: SessionRef, translator: RunTranslator
) -> list[BaseEvent]:
    try:
        run = await reads.get_run(session, translator.run_id)
    except RunNotFoundError:
        return translator.expired()
    except RedisUnavailableError as exc:
        log.warning("run %s: record not read: %s", translator.run_id, exc)
        return []
    return translator.catch_up(run)
