"""The agents file (TOML, `LEASEGATE_AGENTS_FILE`): subscriptions and the agents using them.

    [[subscriptions]]
    id = "sub-a"
    base_url = "https://llm.example/v1"   # optional for echo agents
    api_key_env = "SUB_A_KEY"             # the NAME of an environment variable
    max_concurrent_runs = 10              # optional: runs at once on it, all agents together

    [[agents]]
    id = "helper"
    backend = "openai"                    # or "echo"
    model = "some-model"
    subscriptions = ["sub-a", "sub-b"]     # priority order; the first is the initial one
    system_prompt = "..."                 # optional
    max_concurrent_runs = 3               # optional, any backend: runs at once, fleet-wide

    [[agents]]
    id = "planner"
    backend = "ag-ui"                     # an agent served over the AG-UI protocol
    url = "http://127.0.0.1:8001/agent"
    headers_env = "PLANNER_HEADERS"       # optional: JSON object of extra request headers
    connect_timeout_seconds = 5           # optional, else LEASEGATE_UPSTREAM_CONNECT_...
    read_timeout_seconds = 60             # optional, else LEASEGATE_UPSTREAM_READ_...
    reload_url = "http://127.0.0.1:8001/reload"  # optional: POSTed the new subscription
    drain_timeout_seconds = 120           # optional: how long runs on the old one may finish

    [[agents]]
    id = "local"
    backend = "python"                    # an object (or factory) in this process
    entrypoint = "package.module:attribute"
    reload_method = "reload"              # optional: `async def reload(subscription)`

Validated at start-up: unknown or duplicate ids, keys another backend's agents take, for
openai agents a base_url, a model and a set environment variable for every subscription,
for ag-ui agents a URL and a well-formed `headers_env`. Keys and header values are read
from the environment here and never written anywhere else.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.agents.agui_headers import headers_from_env
from app.agents.base import Subscription
from app.errors import AgentsConfigError

ID_PATTERN = r"^[A-Za-z0-9._\-]{1,64}$"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
Backend = Literal["openai", "echo", "ag-ui", "python"]
DRAIN_TIMEOUT = 120.0
"""How long runs in flight on the old subscription may finish before a reload, by default."""


class _SubscriptionEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=ID_PATTERN)
    base_url: str | None = Field(default=None, pattern=r"^https?://")
    api_key_env: str | None = Field(default=None, pattern=ENV_NAME_PATTERN)
    max_concurrent_runs: int | None = Field(default=None, ge=1)


class _ModelEntry(BaseModel):
    """An `openai` agent, or an `echo` one (which takes the same keys and ignores them)."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=ID_PATTERN)
    backend: Literal["openai", "echo"]
    model: str | None = None
    subscriptions: list[str] = Field(default_factory=list)
    max_concurrent_runs: int | None = Field(default=None, ge=1)
    system_prompt: str | None = None


class _AGUIEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=ID_PATTERN)
    backend: Literal["ag-ui"]
    url: str = Field(pattern=r"^https?://[^/\s]+")
    headers_env: str | None = Field(default=None, pattern=ENV_NAME_PATTERN)
    connect_timeout_seconds: float | None = Field(default=None, gt=0)
    read_timeout_seconds: float | None = Field(default=None, gt=0)
    subscriptions: list[str] = Field(default_factory=list)
    reload_url: str | None = Field(default=None, pattern=r"^https?://[^/\s]+")
    drain_timeout_seconds: float = Field(default=DRAIN_TIMEOUT, gt=0, le=86400)
    max_concurrent_runs: int | None = Field(default=None, ge=1)


class _PythonEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=ID_PATTERN)
    backend: Literal["python"]
    entrypoint: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
    subscriptions: list[str] = Field(default_factory=list)
    reload_method: str | None = Field(default=None, pattern=r"^[A-Za-z_]\w*$")
    drain_timeout_seconds: float = Field(default=DRAIN_TIMEOUT, gt=0, le=86400)
    max_concurrent_runs: int | None = Field(default=None, ge=1)


_AgentEntry = Annotated[_ModelEntry | _AGUIEntry | _PythonEntry, Field(discriminator="backend")]


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")
    subscriptions: list[_SubscriptionEntry] = Field(default_factory=list)
    agents: list[_AgentEntry] = Field(min_length=1)


@dataclass(frozen=True, slots=True)
class AgentConfig:
    id: str
    backend: Backend
    model: str | None = None
    subscriptions: tuple[str, ...] = ()
    system_prompt: str | None = None
    url: str | None = None
    """ag-ui: where each run is POSTed."""
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    """ag-ui: extra request headers (from `headers_env`; may hold the agent's own secrets)."""
    connect_timeout: float | None = None
    read_timeout: float | None = None
    """ag-ui: None means the LEASEGATE_UPSTREAM_* settings."""
    max_concurrent_runs: int | None = None
    """Runs of this agent at once across the fleet; None: no cap."""
    entrypoint: str | None = None
    """python: `package.module:attribute`."""
    reload_url: str | None = None
    """ag-ui: POSTed the new subscription on a switch (the agent holds its credentials)."""
    reload_method: str | None = None
    """python: the agent's `async def <name>(subscription)` called on a switch."""
    drain_timeout: float = DRAIN_TIMEOUT
    """With a reload hook: how long runs on the old subscription may finish first."""

    @property
    def reloads(self) -> bool:
        """Whether a switch must reload the agent (and drain it first)."""
        return bool(self.reload_url or self.reload_method)


@dataclass(frozen=True, slots=True)
class AgentsConfig:
    agents: dict[str, AgentConfig]
    credentials: dict[str, Subscription] = field(default_factory=dict)
    subscription_caps: dict[str, int] = field(default_factory=dict)
    """Runs at once per subscription (`max_concurrent_runs`), across all its agents."""

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
        agents[entry.id] = dataclasses.replace(
            _agent(entry, subscriptions, environ, path),
            max_concurrent_runs=entry.max_concurrent_runs,
        )
    caps = {s.id: s.max_concurrent_runs for s in parsed.subscriptions if s.max_concurrent_runs}
    return AgentsConfig(agents, credentials, caps)


def _agent(
    entry: _AgentEntry,
    subscriptions: dict[str, _SubscriptionEntry],
    environ: Mapping[str, str],
    path: Path,
) -> AgentConfig:
    uses = tuple(entry.subscriptions)
    if isinstance(entry, _AGUIEntry):
        headers = (
            headers_from_env(entry.id, entry.headers_env, environ, path)
            if entry.headers_env
            else {}
        )
        return AgentConfig(
            entry.id,
            "ag-ui",
            subscriptions=uses,
            url=entry.url,
            headers=headers,
            connect_timeout=entry.connect_timeout_seconds,
            read_timeout=entry.read_timeout_seconds,
            reload_url=entry.reload_url,
            drain_timeout=entry.drain_timeout_seconds,
        )
    if isinstance(entry, _PythonEntry):
        return AgentConfig(
            entry.id,
            "python",
            subscriptions=uses,
            entrypoint=entry.entrypoint,
            reload_method=entry.reload_method,
            drain_timeout=entry.drain_timeout_seconds,
        )
    if entry.backend == "openai":
        _check_openai(entry, subscriptions, environ, path)
    return AgentConfig(entry.id, entry.backend, entry.model, uses, entry.system_prompt)


def _check_openai(
    entry: _ModelEntry,
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
