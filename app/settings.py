"""Configuration from the environment (prefix LEASEGATE_), built in create_app() and passed down."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
REDIS_SCHEMES = {"redis", "rediss", "unix"}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LEASEGATE_", extra="ignore", frozen=True)

    redis_url: str | None = Field(
        default=None,
        description="Redis to use. Unset: `leasegate serve` starts an embedded redis-server; "
        f"a bare app factory uses {DEFAULT_REDIS_URL}.",
    )
    lease_ttl_seconds: float = Field(default=10.0, gt=0)
    heartbeat_interval_seconds: float | None = Field(
        default=None, gt=0, description="Lease renewal interval; default a third of the TTL."
    )
    redis_timeout_seconds: float = Field(default=2.0, gt=0)
    retry_after_seconds: int = Field(default=2, ge=1)
    queue_cap: int = Field(default=100, ge=1, description="Queued runs per session at most.")
    default_busy_policy: Literal["enqueue", "interrupt", "reject"] = "enqueue"
    run_retention_seconds: float = Field(default=7 * 24 * 3600, gt=0)
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)
    data_dir: Path = Field(default=Path(".leasegate-data"))
    log_level: str = "INFO"

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        parts = urlsplit(value)
        if parts.scheme not in REDIS_SCHEMES:
            raise ValueError(
                f"LEASEGATE_REDIS_URL must start with one of {sorted(REDIS_SCHEMES)}://"
            )
        if parts.scheme == "unix":
            if not parts.path:
                raise ValueError("LEASEGATE_REDIS_URL: a unix:// URL needs a socket path")
            return value
        if not parts.hostname:
            raise ValueError("LEASEGATE_REDIS_URL has no host")
        try:
            parts.port  # noqa: B018 - raises on a malformed port
        except ValueError as exc:
            raise ValueError(f"LEASEGATE_REDIS_URL has an invalid port: {exc}") from None
        return value

    @model_validator(mode="after")
    def _check_heartbeat(self) -> Settings:
        if self.heartbeat_interval >= self.lease_ttl_seconds:
            raise ValueError(
                "LEASEGATE_HEARTBEAT_INTERVAL_SECONDS must be shorter than "
                "LEASEGATE_LEASE_TTL_SECONDS, or a lease expires between two renewals"
            )
        return self

    @property
    def heartbeat_interval(self) -> float:
        if self.heartbeat_interval_seconds is not None:
            return self.heartbeat_interval_seconds
        return self.lease_ttl_seconds / 3

    @property
    def redis_url_or_default(self) -> str:
        return self.redis_url or DEFAULT_REDIS_URL
