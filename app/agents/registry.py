"""Which agent runs for an `agent_id`."""

from __future__ import annotations

from collections.abc import Mapping

from app.agents.base import Agent
from app.agents.echo import EchoAgent
from app.errors import UnknownAgentError

DEFAULT_AGENT = "echo"


class AgentRegistry:
    def __init__(self, agents: Mapping[str, Agent] | None = None, default: str = DEFAULT_AGENT):
        self._agents: dict[str, Agent] = dict(agents) if agents else {"echo": EchoAgent()}
        if default not in self._agents:
            raise ValueError(f"default agent {default!r} is not configured")
        self.default = default

    def resolve(self, agent_id: str | None) -> str:
        """The agent id a run will use; raises UnknownAgentError for an unknown one."""
        chosen = agent_id or self.default
        if chosen not in self._agents:
            raise UnknownAgentError(chosen)
        return chosen

    def get(self, agent_id: str) -> Agent:
        return self._agents[self.resolve(agent_id)]
