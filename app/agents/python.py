"""The `python` backend: an agent object of your own, named `package.module:attribute`.

The attribute is either the agent itself or a zero-argument factory (a class, a function)
that returns one; it is imported and built once per process at start-up. An agent has a
`stream(request)` method that yields text deltas (an async generator) and an `async
aclose()`; see `app.agents.base.Agent`. Anything else stops start-up with one message
naming the agent and the entrypoint.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterable
from typing import Any, cast

from app.agents.base import Agent
from app.agents.config import AgentConfig
from app.errors import AgentsConfigError


def load_python_agent(config: AgentConfig) -> Agent:
    entrypoint = config.entrypoint or ""
    where = f"python agent {config.id!r}: entrypoint {entrypoint!r}"
    target = _resolve(entrypoint, where)
    problem = _implements(target)
    if problem is None and not inspect.isclass(target):
        return _with_reload(cast(Agent, target), config, where)
    if not callable(target):
        raise AgentsConfigError(f"{where} names a {type(target).__name__} that {problem}")
    try:
        built = target()
    except Exception as exc:
        raise AgentsConfigError(f"{where}: the factory raised {_described(exc)}") from None
    if inspect.iscoroutine(built):
        built.close()
        raise AgentsConfigError(f"{where}: the factory is async; it must return the agent")
    if (problem := _implements(built)) is not None:
        raise AgentsConfigError(f"{where} built a {type(built).__name__} that {problem}")
    return _with_reload(cast(Agent, built), config, where)


def _with_reload(agent: Agent, config: AgentConfig, where: str) -> Agent:
    """The agent, once its `reload_method` (if the file names one) is known to be an
    `async def <name>(subscription)`."""
    if config.reload_method is not None:
        method = getattr(agent, config.reload_method, None)
        if method is None or not inspect.iscoroutinefunction(method):
            raise AgentsConfigError(
                f"{where}: reload_method {config.reload_method!r} is not an async method"
            )
    return agent


def _resolve(entrypoint: str, where: str) -> Any:
    module_name, _, attribute = entrypoint.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:  # an import runs arbitrary code: any failure is a bad entrypoint
        raise AgentsConfigError(f"{where} cannot be imported: {_described(exc)}") from None
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise AgentsConfigError(f"{where}: {module_name} has no {attribute!r}") from None
    return target


def _implements(candidate: object) -> str | None:
    """None if `candidate` implements the Agent protocol, else what it lacks."""
    stream = getattr(candidate, "stream", None)
    aclose = getattr(candidate, "aclose", None)
    if stream is None or not callable(stream):
        return "has no stream(request) method"
    if inspect.iscoroutinefunction(stream):
        return "has an `async def stream` without `yield` (it must be an async generator)"
    if aclose is None or not inspect.iscoroutinefunction(aclose):
        return "has no `async def aclose()` method"
    return None


def _described(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def accepts_steering(agent: object) -> bool:
    """Whether `agent` declares that it reads steered messages (`accepts_steering = True`)."""
    return getattr(agent, "accepts_steering", False) is True


def steerable(agents: Iterable[tuple[str, object]]) -> frozenset[str]:
    """The ids of the agents, of (id, agent) pairs, that accept steering."""
    return frozenset(agent_id for agent_id, agent in agents if accepts_steering(agent))
