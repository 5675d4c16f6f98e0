"""Running an agent on its agent's current subscription, switched once on a refusal.

When the upstream refuses the subscription a run used, the switch is made once per burst
(by whichever worker wins the agent's switch lease; see `switcher`) and the run is tried
once more on the subscription that is current then. A reply already under way is never
retried: part of it was out.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from app.agents import AgentRegistry, AgentRequest, RunContext, Turn
from app.errors import AgentFailedError, SubscriptionFailureError
from app.sessions.models import Run
from app.subscriptions.switcher import Subscriptions


class Progress(Protocol):
    """Where a run's reply goes while it streams."""

    subscription: str | None

    @property
    def replied(self) -> bool:
        """Whether any of the reply was produced already."""
        ...

    def add(self, delta: str) -> None: ...


History = Callable[[], Awaitable[list[Turn]]]


class AgentCalls:
    def __init__(self, agents: AgentRegistry, subscriptions: Subscriptions) -> None:
        self._agents = agents
        self._subscriptions = subscriptions

    async def run(self, run: Run, history: History, progress: Progress) -> None:
        """Run the agent for `run`, streaming its reply into `progress`."""
        try:
            current = await self._subscriptions.current(run.agent_id)
            await self._stream(run, history, progress, current)
        except SubscriptionFailureError as failure:
            if progress.replied or progress.subscription is None:
                raise  # a reply already under way cannot be retried
            result = await self._subscriptions.handle_failure(
                run.agent_id, failure.subscription_id or progress.subscription, failure.kind
            )
            if result.reason == "no_alternative":
                raise AgentFailedError(
                    f"{failure}; no viable subscription to switch to"
                ) from failure
            try:
                await self._stream(run, history, progress, result.to_subscription)
            except SubscriptionFailureError as again:
                raise AgentFailedError(f"{again} (retried after: {failure})") from again

    async def _stream(
        self, run: Run, history: History, progress: Progress, subscription: str | None
    ) -> None:
        progress.subscription = subscription
        request = AgentRequest(
            agent_id=run.agent_id,
            text=run.input,
            metadata=run.metadata,
            history=history,
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
