"""One run's session events as AG-UI events.

    started            RUN_STARTED (threadId, runId: leasegate's run id)
    delta              TEXT_MESSAGE_START before the first one, then TEXT_MESSAGE_CONTENT
    completed          TEXT_MESSAGE_END if a message is open, RUN_FINISHED
    any other ending   TEXT_MESSAGE_END if a message is open, RUN_ERROR (message: the run's
                       error text, code: its status: failed, cancelled, interrupted...)

    a structured event the AG-UI event it came from (TOOL_CALL_START, TOOL_CALL_ARGS,
                       TOOL_CALL_END, TOOL_CALL_RESULT, STATE_SNAPSHOT, STEP_STARTED...),
                       after closing an open text message

Events of other runs, `queued` and `reset` are not translated (a reset ends this run with
its own `cancelled` event). A run that ends before it started (cancelled while queued)
gets RUN_ERROR alone, which AG-UI allows as a first event. A run started again after
reply text went out (LEASEGATE_RETRY_LOST_RUNS) closes the partial message; the new
attempt's reply is a new message. The assistant message's id is the run id (then
`<run id>.<attempt>`), so whichever worker streams the run names the message alike.

`catch_up` finishes the stream from the run's record instead of its events, for a run
whose events are no longer in the stream (trimmed, expired) or were never read (a
duplicate admission of a run that has ended).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from ag_ui.core import (
    BaseEvent,
    Event,
    EventType,
    RunErrorEvent,
    RunFinishedEvent,
    RunStartedEvent,
    TextMessageContentEvent,
    TextMessageEndEvent,
    TextMessageStartEvent,
)
from pydantic import TypeAdapter, ValidationError

from app.sessions.models import Run, RunStatus

EXPIRED = "expired"
STRUCTURED = frozenset(
    t.value.lower() for t in EventType if not t.value.startswith(("RUN_", "TEXT_MESSAGE_"))
)
_EVENT: TypeAdapter[Event] = TypeAdapter(Event)
ENDINGS = frozenset({s.value for s in RunStatus if s.terminal} | {EXPIRED})


class RunTranslator:
    def __init__(self, thread_id: str, run_id: str) -> None:
        self.thread_id = thread_id
        self.run_id = run_id
        self.started = False
        self.done = False
        self._attempt = 1
        self._parts = 1
        self._message: str | None = None
        self._text: list[str] = []

    def translate(self, event_id: str, fields: Mapping[str, str]) -> list[BaseEvent]:
        """The AG-UI events of one entry of the session's event stream."""
        if self.done or fields.get("run_id") != self.run_id:
            return []
        kind, text, at = fields.get("type", ""), fields.get("text", ""), _millis(event_id)
        if kind == "started":
            return self._restart(at) if self.started else self._open(at)
        if kind == "delta":
            return [*self._open(at), *self._content(text, at)] if text else []
        if kind in ENDINGS:
            return self._end(kind, text, at)
        if kind in STRUCTURED:
            event = _structured(kind, text, at)
            if event is None:
                return []
            closing = self._close(at)
            if closing:
                self._parts += 1  # text after it is a message of its own
            return [*self._open(at), *closing, event]
        return []

    def catch_up(self, run: Run) -> list[BaseEvent]:
        """The events the run's record shows that were not sent: its start, the rest of
        its reply, and its end once it has ended."""
        if self.done or run.status is RunStatus.QUEUED:
            return []
        events = self._open(_micros_to_millis(run.started_at)) if run.started_at else []
        if not run.status.terminal:
            return events
        at = _micros_to_millis(run.finished_at)
        sent, output = "".join(self._text), run.output or ""
        if len(output) > len(sent) and output.startswith(sent):
            events += [*self._open(at), *self._content(output[len(sent) :], at)]
        return events + self._end(run.status.value, run.error or "", at)

    def expired(self) -> list[BaseEvent]:
        """The run's record is gone (past the retention period): end the stream."""
        if self.done:
            return []
        return self._end(EXPIRED, "the run's record is no longer kept", None)

    def _open(self, at: int | None) -> list[BaseEvent]:
        if self.started:
            return []
        self.started = True
        return [RunStartedEvent(thread_id=self.thread_id, run_id=self.run_id, timestamp=at)]

    def _restart(self, at: int | None) -> list[BaseEvent]:
        """Started again: a partial reply already sent stays a message of its own."""
        if self._message is None:
            return []
        self._attempt += 1
        self._text = []
        return self._close(at)

    def _content(self, text: str, at: int | None) -> list[BaseEvent]:
        events: list[BaseEvent] = []
        if self._message is None:
            suffix = "" if self._attempt == 1 else f".{self._attempt}"
            suffix += "" if self._parts == 1 else f"-{self._parts}"
            self._message = f"{self.run_id}{suffix}"
            events.append(
                TextMessageStartEvent(message_id=self._message, role="assistant", timestamp=at)
            )
        self._text.append(text)
        events.append(TextMessageContentEvent(message_id=self._message, delta=text, timestamp=at))
        return events

    def _close(self, at: int | None) -> list[BaseEvent]:
        if self._message is None:
            return []
        message, self._message = self._message, None
        return [TextMessageEndEvent(message_id=message, timestamp=at)]

    def _end(self, status: str, error: str, at: int | None) -> list[BaseEvent]:
        self.done = True
        events = self._close(at)
        if status == RunStatus.COMPLETED:
            events.append(
                RunFinishedEvent(thread_id=self.thread_id, run_id=self.run_id, timestamp=at)
            )
        else:
            message = error or f"the run ended {status}"
            events.append(RunErrorEvent(message=message, code=status, timestamp=at))
        return events


def _millis(event_id: str) -> int | None:
    """A stream entry's time (its id is `<ms>-<seq>` on Redis' clock)."""
    millis, _, _ = event_id.partition("-")
    return int(millis) if millis.isdigit() else None


def _micros_to_millis(epoch_us: int | None) -> int | None:
    return epoch_us // 1000 if epoch_us is not None else None


def _structured(kind: str, data: str, at: int | None) -> BaseEvent | None:
    """The AG-UI event a structured run event came from (None if it no longer validates)."""
    try:
        fields = json.loads(data or "{}")
        return _EVENT.validate_python({**fields, "type": kind.upper(), "timestamp": at})
    except (ValueError, ValidationError):
        return None
