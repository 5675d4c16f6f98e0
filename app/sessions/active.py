"""A run as its holder sees it while it goes on: the reply so far, its structured events
(bounded), the session's agent state as the run changes it, and how to stop it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import jsonpatch
import jsonpointer

from app.agents import RunEvent
from app.agents.base import Inbox
from app.errors import AgentFailedError
from app.sessions.deltas import STATE_ITEM, DeltaBuffer
from app.sessions.models import Run

MAX_EVENTS_PER_RUN = 10_000
MAX_EVENT_BYTES = 64 * 1024


@dataclass(slots=True)
class ActiveRun:
    run: Run
    task: asyncio.Task[None] | None = None
    parts: list[str] = field(default_factory=list)
    stop_reason: str | None = None
    subscription: str | None = None
    deltas: DeltaBuffer | None = None

    events: int = 0
    read_state: Callable[[], Awaitable[dict[str, Any]]] | None = None
    state: dict[str, Any] | None = None
    """The session's agent state as this run left it so far (None: not read yet)."""
    inbox: Inbox = field(default_factory=Inbox)
    """Messages steered into the run (`app/sessions/steering.py` delivers them)."""
    catching_up: asyncio.Task[None] | None = None

    @property
    def replied(self) -> bool:
        return bool(self.parts) or self.events > 0

    def add(self, item: str | RunEvent) -> None:
        if self.stop_reason is not None:
            # Asked to stop, yet the agent's reply goes on: its cancellation was swallowed
            # on the way (a library racing it); end the run here rather than keep going.
            raise asyncio.CancelledError(self.stop_reason)
        if isinstance(item, str):
            self.parts.append(item)
            if self.deltas is not None:
                self.deltas.add(item)
            return
        payload = json.dumps(item.data, separators=(",", ":"))
        self.events += 1
        if self.events > MAX_EVENTS_PER_RUN:
            raise AgentFailedError(f"the agent sent more than {MAX_EVENTS_PER_RUN} events")
        if len(payload) > MAX_EVENT_BYTES:
            raise AgentFailedError(
                f"the agent sent a {item.kind} event of {len(payload)} bytes; "
                f"at most {MAX_EVENT_BYTES}"
            )
        if self.deltas is not None:
            self.deltas.add_event(item.kind, payload)
        if item.kind in ("state_snapshot", "state_delta"):
            self._change_state(item)

    async def agent_state(self) -> dict[str, Any]:
        if self.state is None:
            self.state = await self.read_state() if self.read_state is not None else {}
        return self.state

    def _change_state(self, item: RunEvent) -> None:
        """Apply a state event; the new state is kept with the session (an item that the
        outcome's batch writes, after the event itself)."""
        if item.kind == "state_delta" and self.state is None:
            raise AgentFailedError("the agent sent a state delta without reading the state first")
        try:
            if item.kind == "state_snapshot":
                state = item.data.get("snapshot")
            else:
                state = jsonpatch.apply_patch(self.state, item.data.get("delta") or [])
        except (
            jsonpatch.JsonPatchException,
            jsonpointer.JsonPointerException,
            TypeError,
            ValueError,
            KeyError,
        ) as exc:
            raise AgentFailedError(
                f"the agent sent a state delta that does not apply: {exc}"
            ) from None
        if not isinstance(state, dict):
            raise AgentFailedError("the agent's state must be a JSON object")
        self.state = state
        if self.deltas is not None:
            self.deltas.add_event(STATE_ITEM, json.dumps(state, separators=(",", ":")))

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        if self.task is not None:
            self.task.cancel()
