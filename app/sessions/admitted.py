"""What ADMIT's reply says: the admission it made, decoded from the codes of
app/sessions/admission.py (whose comment on ADMIT gives each reply's shape).
"""

from __future__ import annotations

from typing import Any

from app.errors import QueueFullError, SessionBusyError
from app.redis import as_text
from app.sessions.lua import Code, decode_run_pair
from app.sessions.models import Admission, Run, RunStatus, StartedHold
from app.sessions.ref import SessionRef


def decode_admission(
    session: SessionRef, reply: list[Any], run_id: str, token: str, sent: float, queue_cap: int
) -> Admission | None:
    """The admission ADMIT's `reply` says was made of run `run_id` (sent at `sent`, under
    the lease token `token`); None when it was given up (ABORTED). A refusal raises."""
    code = Code(reply[0])
    if code == Code.ABORTED:
        return None
    if code == Code.STARTED:
        first = Run.from_record(decode_run_pair(reply[2], reply[3]))
        mine = first.run_id == run_id
        running = mine and first.status is RunStatus.RUNNING
        hold = StartedHold(token, sent, first)
        return Admission(
            run_id,
            RunStatus.RUNNING if running else RunStatus.QUEUED,
            int(reply[1]),
            start=hold,
            disposition=as_text(reply[4]) if len(reply) > 4 else None,
            superseded_run_ids=first.superseded_run_ids if mine else [],
        )
    if code in (Code.STEERED, Code.COLLECTED):
        # The message went into another run: the answer names that run.
        into = as_text(reply[1])
        return Admission(
            into,
            RunStatus(as_text(reply[3])),
            int(reply[2]),
            disposition="steered" if code == Code.STEERED else "collected",
        )
    if code == Code.QUEUED:
        disposition = as_text(reply[3])
        cut = as_text(reply[2]) if disposition in ("interrupted", "rolled_back") else None
        return Admission(
            run_id,
            RunStatus.QUEUED,
            int(reply[1]),
            disposition=disposition,
            interrupted_run_id=cut,
            superseded_run_ids=[as_text(r) for r in reply[4:]],
        )
    if code == Code.DUPLICATE:
        existing = Run.from_record(decode_run_pair(reply[1], reply[2]))
        return Admission(
            existing.run_id,
            existing.status,
            0,
            duplicate=True,
            run=existing,
            disposition=existing.disposition,
        )
    if code == Code.REJECTED:
        raise SessionBusyError(session.session_id, as_text(reply[1]) or None)
    if code == Code.QUEUE_FULL:
        raise QueueFullError(session.session_id, queue_cap)
    raise RuntimeError(f"unexpected admission code {code!r}")
