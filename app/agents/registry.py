"""Which agent runs for an `agent_id`, and which subscriptions it may use."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping

from app.agents.base import Agent, Subscription
from app.agents.config import AgentConfig, AgentsConfig, default_config, load_agents_file
from app.agents.echo import EchoAgent
from app.errors import UnknownAgentError
from app.settings import Settings

DEFAULT_AGENT = "echo"


class AgentRegistry:
    def __init__(
        self,
        agents: Mapping[str, Agent] | None = None,
        *,
        config: AgentsConfig | None = None,
        default: str | None = None,
    ) -> None:
        self.config = config if config is not None else default_config()
        self._agents: dict[str, Agent] = (
            dict(agents) if agents else {a.id: EchoAgent() for a in self.config.agents.values()}
        )
        ids = list(self._agents)
        self.default = default or (DEFAULT_AGENT if DEFAULT_AGENT in self._agents else ids[0])
        if self.default not in self._agents:
            raise ValueError(f"default agent {self.default!r} is not configured")

    @classmethod
    def from_settings(
        cls, settings: Settings, environ: Mapping[str, str] | None = None
    ) -> AgentRegistry:
        """Load the agents file (or the built-in echo agent) and build each agent's backend.

        Raises AgentsConfigError for an invalid file or a python entrypoint that does not
        import or does not implement the Agent protocol."""
        if settings.agents_file is None:
            return cls()
        config = load_agents_file(settings.agents_file, os.environ if environ is None else environ)
        return cls({a.id: _build(a, settings) for a in config.agents.values()}, config=config)

    def resolve(self, agent_id: str | None) -> str:
        """The agent id a run will use; raises UnknownAgentError for an unknown one."""
        chosen = agent_id or self.default
        if chosen not in self._agents:
            raise UnknownAgentError(chosen)
        return chosen

    def get(self, agent_id: str) -> Agent:
        return self._agents[self.resolve(agent_id)]

    def ids(self) -> list[str]:
        return list(self._agents)

    def subscriptions_of(self, agent_id: str) -> tuple[str, ...]:
        """The agent's subscriptions in priority order; empty for agents without any."""
        config = self.config.agents.get(agent_id)
        return config.subscriptions if config else ()

    def credentials(self, subscription_id: str) -> Subscription:
        return self.config.subscription(subscription_id)

    async def aclose(self) -> None:
        for agent in self._agents.values():
            with contextlib.suppress(Exception):
                await agent.aclose()


def _build(agent: AgentConfig, settings: Settings) -> Agent:
    # Backends are imported where configured: httpx clients and AG-UI models only if used.
    if agent.backend == "openai":
        from app.agents.openai import OpenAIAgent

        return OpenAIAgent(
            agent,
            connect_timeout=settings.upstream_connect_timeout_seconds,
            read_timeout=settings.upstream_read_timeout_seconds,
            max_retries=settings.upstream_max_retries,
        )
    if agent.backend == "ag-ui":
        from app.agents.agui import AGUIAgent

        return AGUIAgent(
            agent,
            connect_timeout=agent.connect_timeout or settings.upstream_connect_timeout_seconds,
            read_timeout=agent.read_timeout or settings.upstream_read_timeout_seconds,
            max_retries=settings.upstream_max_retries,
        )
    if agent.backend == "python":
        from app.agents.python import load_python_agent

        return load_python_agent(agent)
    return EchoAgent()
