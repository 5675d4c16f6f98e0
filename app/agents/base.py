"""The interface every agent implements."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Turn:
    """One turn of a session's conversation. `role` is "user", "assistant", "tool_call"
    (the assistant called a tool: `tool_call_id`, `name`, `args` as JSON text) or "tool"
    (what the tool answered: `tool_call_id`, and the answer in `text`)."""

    role: str
    text: str
    run_id: str
    tool_call_id: str | None = None
    name: str | None = None
    args: str | None = None


@dataclass(frozen=True, slots=True)
class RunEvent:
    """A structured event of a run, besides its reply text: a tool call starting
    (`tool_call_start`), its arguments (`tool_call_args`), its end (`tool_call_end`), the
    tool's answer (`tool_call_result`), state (`state_snapshot`, `state_delta`), steps,
    reasoning and custom events. `data` is JSON: the event's own fields (AG-UI's names)."""

    kind: str
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Subscription:
    """Credentials of an account at an LLM provider, as one run uses them."""

    id: str
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)


class Inbox:
    """Messages steered into a run while it goes on (`busy_policy: steer`), in the order
    they arrived. Only agents that declare `accepts_steering = True` get messages steered
    to them; such an agent reads its inbox between its steps: `take()` returns what came
    since the last read (without waiting), `wait()` waits for the next message."""

    def __init__(self) -> None:
        self._messages: list[str] = []
        self._read = 0
        self._arrived = asyncio.Event()

    @property
    def delivered(self) -> int:
        """How many messages arrived so far."""
        return len(self._messages)

    @property
    def read(self) -> int:
        """How many messages the agent took so far."""
        return self._read

    def deliver(self, index: int, text: str) -> bool:
        """Message number `index` (1, 2, ... in arrival order) arrived; a repeat is
        ignored. False when an earlier one is still missing (it must come first)."""
        if index <= len(self._messages):
            return True
        if index > len(self._messages) + 1:
            return False
        self._messages.append(text)
        self._arrived.set()
        return True

    def take(self) -> list[str]:
        new = self._messages[self._read :]
        self._read = len(self._messages)
        self._arrived.clear()
        return new

    async def wait(self) -> list[str]:
        while self._read == len(self._messages):
            await self._arrived.wait()
            self._arrived.clear()
        return self.take()


@dataclass(frozen=True, slots=True)
class AgentRequest:
    agent_id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    history: Callable[[], Awaitable[list[Turn]]] | None = None
    """Reads the session's conversation so far (current generation), oldest first; a
    callable so that agents that need no context cost no Redis round trip."""
    subscription: Subscription | None = None
    """The subscription the run uses; None for agents without subscriptions."""
    run: RunContext | None = None
    """Which run this is, under which fence; None outside a session (tests, tools)."""
    state: Callable[[], Awaitable[dict[str, Any]]] | None = None
    """Reads the session's agent state as the agent last left it (its `state_snapshot` and
    `state_delta` events, JSON Patch applied; `{}` at first); a callable, like `history`."""
    inputs: tuple[str, ...] = ()
    """A collect run's messages in order (`text` is them joined by blank lines); empty
    for other runs."""
    inbox: Inbox | None = None
    """Messages steered into this run while it goes on (agents that accept steering)."""


@dataclass(frozen=True, slots=True)
class RunContext:
    """Where a request comes from. `fence` is the run's own, higher than every earlier run's
    of the session: an agent's own storage can refuse writes that carry a lower one."""

    tenant: str
    session_id: str
    run_id: str
    fence: int
    generation: int


class Agent(Protocol):
    """An agent may also declare `accepts_steering = True` (a class attribute): messages
    sent with `busy_policy: steer` while it runs are then put in its request's `inbox`
    instead of waiting for a run of their own."""

    def stream(self, request: AgentRequest) -> AsyncIterator[str | RunEvent]:
        """Yield the reply as text deltas (and, if the agent has them, `RunEvent`s); raise
        AgentFailedError (or a subclass) on failure, SubscriptionFailureError when the
        upstream refuses the subscription.

        Cancellation arrives as CancelledError at any await and must not be swallowed.
        """
        ...

    async def aclose(self) -> None:
        """Close upstream connections at shutdown."""
        ...
