"""Agents: what a run executes. An agent streams text deltas and raises typed errors."""

from app.agents.base import Agent, AgentRequest, RunContext, RunEvent, Turn
from app.agents.echo import EchoAgent
from app.agents.registry import AgentRegistry

__all__ = ["Agent", "AgentRegistry", "AgentRequest", "EchoAgent", "RunContext", "RunEvent", "Turn"]
