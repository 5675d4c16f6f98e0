"""The agents file (TOML, `LEASEGATE_AGENTS_FILE`): subscriptions and the agents using them.

    [[subscriptions]]
    id = "sub-a"
    base_url = "https://llm.example/v1"   # optional for echo agents
    api_key_env = "SUB_A_KEY"             # the NAME of an environment variable

    [[agents]]
    id = "helper"
    backend = "openai"                    # or "echo"
    model = "some-model"
    subscriptions = ["sub-a", "sub-b"]     # priority order; the first is the initial one
    system_prompt = "..."                 # optional

Validated at start-up: unknown or duplicate ids, and, for openai agents, a base_url, a
model and a set environment variable for every subscription. Keys are read from the
environment here and never written anywhere else.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.agents.base import Subscription
from app.errors import AgentsConfigError

ID_PATTERN = r"^[A-Za-z0-9._\-]{1,64}$"


class _SubscriptionEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=ID_PATTERN)
    base_url: str | None = Field(default=None, pattern=r"^https?://")
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")


class _AgentEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=ID_PATTERN)
    backend: Literal["openai", "echo"]
    model: str | None = None
    subscriptions: list[str] = Field(default_factory=list)
    system_prompt: str | None = None


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")
    subscriptions: list[_SubscriptionEntry] = Field(default_factory=list)
    agents: list[_AgentEntry] = Field(min_length=1)


@dataclass(frozen=True, slots=True)
class AgentConfig:
    id: str
    backend: Literal["openai", "echo"]
    model: str | None = None
    subscriptions: tuple[str, ...] = ()
    system_prompt: str | None = None


@dataclass(frozen=True, slots=True)
class AgentsConfig:
    agents: dict[str, AgentConfig]
    credentials: dict[str, Subscription] = field(default_factory=dict)

    def subscription(self, subscription_id: str) -> Subscription:
        return self.credentials[subscription_id]


def default_config() -> AgentsConfig:
    return AgentsConfig(agents={"echo": AgentConfig(id="echo", backend="echo")})


def load_agents_file(path: Path, environ: Mapping[str, str]) -> AgentsConfig:
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise AgentsConfigError(f"agents file {path}: cannot be read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise AgentsConfigError(f"agents file {path}: not valid TOML: {exc}") from None
    try:
        parsed = _File.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise AgentsConfigError(f"agents file {path}: {problems}") from None
    return _build(parsed, environ, path)


def _build(parsed: _File, environ: Mapping[str, str], path: Path) -> AgentsConfig:
    subscriptions = {s.id: s for s in parsed.subscriptions}
    _no_duplicates([s.id for s in parsed.subscriptions], "subscription", path)
    _no_duplicates([a.id for a in parsed.agents], "agent", path)
    agents: dict[str, AgentConfig] = {}
    credentials: dict[str, Subscription] = {}
    for entry in parsed.agents:
        _no_duplicates(entry.subscriptions, f"subscription of agent {entry.id!r}", path)
        for sub_id in entry.subscriptions:
            if sub_id not in subscriptions:
                raise AgentsConfigError(
                    f"agents file {path}: agent {entry.id!r} names unknown subscription {sub_id!r}"
                )
            sub = subscriptions[sub_id]
            credentials[sub_id] = Subscription(
                sub_id, sub.base_url, environ.get(sub.api_key_env) if sub.api_key_env else None
            )
        if entry.backend == "openai":
            _check_openai(entry, subscriptions, environ, path)
        agents[entry.id] = AgentConfig(
            entry.id, entry.backend, entry.model, tuple(entry.subscriptions), entry.system_prompt
        )
    return AgentsConfig(agents, credentials)


def _check_openai(
    entry: _AgentEntry,
    subscriptions: dict[str, _SubscriptionEntry],
    environ: Mapping[str, str],
    path: Path,
) -> None:
    where = f"agents file {path}: openai agent {entry.id!r}"
    if not entry.model:
        raise AgentsConfigError(f"{where} needs a model")
    if not entry.subscriptions:
        raise AgentsConfigError(f"{where} needs at least one subscription")
    for sub_id in entry.subscriptions:
        sub = subscriptions[sub_id]
        if not sub.base_url:
            raise AgentsConfigError(f"{where}: subscription {sub_id!r} needs a base_url")
        if not sub.api_key_env:
            raise AgentsConfigError(f"{where}: subscription {sub_id!r} needs an api_key_env")
        if not environ.get(sub.api_key_env):
            raise AgentsConfigError(
                f"{where}: environment variable {sub.api_key_env} (subscription {sub_id!r}) "
                "is not set"
            )


def _no_duplicates(ids: list[str], what: str, path: Path) -> None:
    seen: set[str] = set()
    for item in ids:
        if item in seen:
            raise AgentsConfigError(f"agents file {path}: duplicate {what} id {item!r}")
        seen.add(item)
