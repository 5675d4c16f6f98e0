"""Running an agent on its agent's current subscription, switched on a refusal.

When the upstream refuses the subscription a run used, the refusal is recorded and the
switch is made once per burst (by whichever worker wins the agent's switch lease; see
`switcher`), and the run is tried again on the subscription that is current then: once per
subscription, so an agent of three tries A, B and C. With no viable subscription left, a
`rate_limit` whose wait is short (at most `Cooldowns.wait_max` in all) makes the run wait
for the first subscription to come back and try again; anything else fails the run with
SubscriptionsExhaustedError. A reply already under way is never retried: part of it was out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from app.agents import AgentRegistry, AgentRequest, RunContext, RunEvent, Turn
from app.agents.base import Inbox
from app.errors import AgentFailedError, SubscriptionFailureError, SubscriptionsExhaustedError
from app.sessions.models import Run
from app.subscriptions.outcomes import SwitchResult
from app.subscriptions.switcher import Subscriptions

log = logging.getLogger(__name__)


class Progress(Protocol):
    """Where a run's reply goes while it streams."""

    subscription: str | None
    inbox: Inbox
    """Messages steered into the run while it goes on."""

    @property
    def replied(self) -> bool:
        """Whether any of the reply was produced already."""
        ...

    def add(self, item: str | RunEvent) -> None:
        """Reply text, or a structured event; raises AgentFailedError past the run's bounds."""
        ...

    async def agent_state(self) -> dict[str, Any]:
        """The session's agent state as the run starts."""
        ...


History = Callable[[], Awaitable[list[Turn]]]


class SubscriptionSlots(Protocol):
    """Holds a slot of a capped subscription around one call of the agent
    (`app.capacity.CapacityGate.subscription`); after a switch, the new one's."""

    def subscription(
        self, run: Run, subscription_id: str | None, progress: Progress
    ) -> contextlib.AbstractAsyncContextManager[None]: ...


class _Uncapped:
    def subscription(
        self, run: Run, subscription_id: str | None, progress: Progress
    ) -> contextlib.AbstractAsyncContextManager[None]:
        return contextlib.nullcontext()


class Regate(Protocol):
    """A run refused in flight passes its agent's reload gate again (`ReloadGate.again`):
    the subscription it may use then, or None for an agent without a gate."""

    async def again(self, run: Run, progress: Progress) -> str | None: ...


MAX_WAITS = 5
"""Waits of one run for a subscription to come back, whatever their length."""
WAIT_MARGIN = 0.01
"""Added to a wait, so that the subscription's time has ended when the run tries it again."""


class AgentCalls:
    def __init__(
        self,
        agents: AgentRegistry,
        subscriptions: Subscriptions,
        capacity: SubscriptionSlots | None = None,
    ) -> None:
        self._agents = agents
        self._subscriptions = subscriptions
        self._capacity = capacity or _Uncapped()
        self.gate: Regate | None = None

    async def run(self, run: Run, history: History, progress: Progress) -> None:
        """Run the agent for `run`, streaming its reply into `progress`."""
        # A reload gate the run passed chose its subscription already.
        subscription = progress.subscription or await self._subscriptions.current(run.agent_id)
        tried: set[str] = set()
        waited, waits = 0.0, 0
        while True:
            try:
                async with self._capacity.subscription(run, subscription, progress):
                    await self._stream(run, history, progress, subscription)
                return
            except SubscriptionFailureError as failure:
                if progress.replied or progress.subscription is None:
                    raise  # a reply already under way cannot be retried
                failed = failure.subscription_id or progress.subscription
                tried.add(failed)
                result = await self._subscriptions.handle_failure(
                    run.agent_id, failed, failure.kind, failure.cooldown
                )
                wait = self._wait_for(failure, result, waited, waits)
                if wait is not None:
                    log.info(
                        "agent %s: run %s waits %.3gs for a subscription",
                        run.agent_id,
                        run.run_id,
                        wait,
                    )
                    await asyncio.sleep(wait)
                    waited += wait
                    waits += 1
                    tried.clear()
                    subscription = await self._next(run, progress, None)
                elif result.reason == "no_alternative":
                    raise SubscriptionsExhaustedError(
                        run.agent_id, result.retry_in, str(failure)
                    ) from failure
                elif result.to_subscription in tried:
                    raise AgentFailedError(
                        f"{failure}; subscription {result.to_subscription!r} was tried already"
                    ) from failure
                else:
                    subscription = await self._next(run, progress, result.to_subscription)
                    if subscription in tried:  # a reload gate opened again on a refused one
                        waits += 1
                        if waits > MAX_WAITS:
                            raise AgentFailedError(
                                f"{failure}; refused again on {subscription!r} each time "
                                "its agent's gate opened on it"
                            ) from failure

    async def _next(self, run: Run, progress: Progress, to: str | None) -> str | None:
        """The subscription to try next: for an agent that reloads, the one it holds once
        the run passed its gate again (`app.subscriptions.gate`)."""
        if self.gate is not None and (passed := await self.gate.again(run, progress)):
            return passed
        return to if to is not None else await self._subscriptions.current(run.agent_id)

    def _wait_for(
        self, failure: SubscriptionFailureError, result: SwitchResult, waited: float, waits: int
    ) -> float | None:
        """Seconds to wait for a subscription to come back, or None to switch or fail."""
        back_in = result.retry_in
        if result.reason != "no_alternative" or failure.kind != "rate_limit" or back_in is None:
            return None
        if waits >= MAX_WAITS or waited + back_in > self._subscriptions.cooldowns.wait_max:
            return None
        return back_in + WAIT_MARGIN

    async def _stream(
        self, run: Run, history: History, progress: Progress, subscription: str | None
    ) -> None:
        progress.subscription = subscription
        request = AgentRequest(
            agent_id=run.agent_id,
            text=run.input,
            metadata=run.metadata,
            history=history,
            state=progress.agent_state,
            inputs=tuple(run.inputs),
            inbox=progress.inbox,
            subscription=self._agents.credentials(subscription) if subscription else None,
            run=RunContext(
                tenant=run.tenant,
                session_id=run.session_id,
                run_id=run.run_id,
                fence=run.fence or 0,
                generation=run.generation,
            ),
        )
        async for delta in self._agents.get(run.agent_id).stream(request):
            progress.add(delta)
