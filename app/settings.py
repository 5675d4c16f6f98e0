"""Configuration from the environment (prefix LEASEGATE_), built in create_app() and passed down."""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.keys import checked_tenant
from app.redis.urls import parse_redis_url
from app.subscriptions.classify import Cooldowns

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
MIN_SECRET_LENGTH = 8


class Settings(BaseSettings):
    # hide_input_in_errors: a rejected value may be a secret (a key, a URL with a password).
    model_config = SettingsConfigDict(
        env_prefix="LEASEGATE_", extra="ignore", frozen=True, hide_input_in_errors=True
    )

    redis_url: str | None = Field(
        default=None,
        repr=False,  # may carry a password
        description="Redis to use. Unset: `leasegate serve` starts an embedded redis-server; "
        f"a bare app factory uses {DEFAULT_REDIS_URL}.",
    )
    lease_ttl_seconds: float = Field(default=10.0, gt=0)
    heartbeat_interval_seconds: float | None = Field(
        default=None, gt=0, description="Lease renewal interval; default a third of the TTL."
    )
    redis_timeout_seconds: float = Field(default=2.0, gt=0)
    redis_max_connections: int = Field(
        default=50, ge=4, description="Redis connections per worker (pub/sub included)."
    )
    retry_after_seconds: int = Field(default=2, ge=1)
    queue_cap: int = Field(default=100, ge=1, description="Queued runs per session at most.")
    default_busy_policy: Literal[
        "enqueue", "interrupt", "reject", "latest", "rollback", "steer", "collect"
    ] = "enqueue"
    run_retention_seconds: float = Field(default=7 * 24 * 3600, gt=0)
    shutdown_grace_seconds: float = Field(
        default=10.0,
        ge=0,
        description="How long a stopping worker lets its runs in flight finish.",
    )
    redis_warning_interval_seconds: float = Field(
        default=10.0,
        gt=0,
        description="While Redis is unreachable, each worker says so once per this interval.",
    )
    sweep_interval_seconds: float = Field(
        default=5.0, gt=0, description="How often a lost holder's sessions are looked for."
    )
    retry_lost_runs: bool = Field(
        default=False, description="Run a lost holder's in-flight run once more, not `lost`."
    )
    task_timeout_seconds: float = Field(
        default=7200, gt=0, le=7200, description="Default deadline of a scheduled task's run."
    )
    internal_secret: SecretStr | None = Field(
        default=None, repr=False, description="Shared secret of /internal/*; unset: they are off."
    )
    api_keys: dict[str, str] = Field(
        default_factory=dict, repr=False, description='JSON {"<api key>": "<tenant>", ...}'
    )
    require_auth: bool = False
    internal_tenant: str = Field(
        default="default", description="Tenant of scheduled tasks that name none."
    )
    agents_file: Path | None = Field(
        default=None, description="TOML file of agents and subscriptions; unset: one echo agent."
    )
    cooldown_rate_limit_seconds: float = Field(
        default=60, ge=0, description="A rate-limited subscription rests this long if not told."
    )
    cooldown_quota_seconds: float = Field(
        default=7200, ge=0, description="A subscription out of quota rests this long if not told."
    )
    rate_limit_wait_max_seconds: float = Field(
        default=30, ge=0, description="With no other subscription, a run waits this long at most."
    )
    switch_lease_ttl_seconds: float = Field(default=10.0, gt=0)
    switch_wait_timeout_seconds: float = Field(default=15.0, gt=0)
    events_max_length: int = Field(default=10_000, ge=100)
    webhook_url: SecretStr | None = Field(
        default=None, repr=False, description="POSTed once per subscription switch."
    )
    run_webhook_url: SecretStr | None = Field(
        default=None, repr=False, description="POSTed when any run ends (a completion webhook)."
    )
    webhook_secret: SecretStr | None = Field(
        default=None, repr=False, description="Signs completion webhooks: whsec_<base64>."
    )
    webhook_allowed_hosts: list[str] = Field(
        default_factory=list, description="Hosts a message's own webhook URL may target."
    )
    webhook_max_attempts: int = Field(default=12, ge=1, le=50)
    webhook_retry_base_seconds: float = Field(default=30.0, gt=0)
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    webhook_interval_seconds: float = Field(default=0.5, gt=0)
    upstream_connect_timeout_seconds: float = Field(default=5.0, gt=0)
    upstream_read_timeout_seconds: float = Field(default=60.0, gt=0)
    upstream_max_retries: int = Field(default=2, ge=0, le=10)
    worker_heartbeat_seconds: float = Field(
        default=2.0, gt=0, description="How often a worker renews its entry in the registry."
    )
    console_interval_seconds: float = Field(
        default=1.0, ge=0.1, le=60, description="How often the console stream sends a snapshot."
    )
    max_concurrent_runs: int | None = Field(
        default=None, ge=1, description="Runs of the whole fleet at once; unset: no cap."
    )
    tenant_max_concurrent_runs: int | None = Field(
        default=None, ge=1, description="Runs of one tenant at once; unset: no cap."
    )
    tenant_limits: dict[str, int] = Field(
        default_factory=dict, description='JSON {"<tenant>": <max concurrent runs>, ...}'
    )
    data_dir: Path = Field(default=Path(".leasegate-data"))
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        """A single server, a Cluster or a Sentinel set (see app/redis/urls.py for the
        URL forms); the error names what is wrong, never the URL itself."""
        if value is None or value == "":
            return None
        parse_redis_url(value)  # a ValueError with a clear message
        return value

    @field_validator("internal_secret")
    @classmethod
    def _check_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or value.get_secret_value() == "":
            return None
        if len(value.get_secret_value()) < MIN_SECRET_LENGTH:
            raise ValueError(
                f"LEASEGATE_INTERNAL_SECRET must be at least {MIN_SECRET_LENGTH} characters"
            )
        return value

    @field_validator("api_keys")
    @classmethod
    def _check_api_keys(cls, value: dict[str, str]) -> dict[str, str]:
        for key, tenant in value.items():
            if len(key) < MIN_SECRET_LENGTH:
                raise ValueError(
                    f"LEASEGATE_API_KEYS: every key must be at least "
                    f"{MIN_SECRET_LENGTH} characters (tenant {tenant!r})"
                )
            checked_tenant(tenant)  # an InvalidKeyError is a ValueError: a clear message
        return value

    @field_validator("tenant_limits")
    @classmethod
    def _check_tenant_limits(cls, value: dict[str, int]) -> dict[str, int]:
        for tenant, cap in value.items():
            checked_tenant(tenant)
            if cap < 1:
                raise ValueError(f"LEASEGATE_TENANT_LIMITS: tenant {tenant!r} needs a cap of 1+")
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _check_webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        raw = value.get_secret_value()
        try:
            ok = raw.startswith("whsec_") and len(base64.b64decode(raw[6:], validate=True)) >= 24
        except binascii.Error:
            ok = False
        if not ok:
            raise ValueError("must be whsec_ followed by at least 24 bytes in base64")
        return value

    @field_validator("run_webhook_url")
    @classmethod
    def _check_run_webhook_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not is_http_url(value.get_secret_value()):
            raise ValueError("must be an absolute http:// or https:// URL")
        return value

    @model_validator(mode="after")
    def _check_webhook_signing(self) -> Settings:
        if (self.run_webhook_url or self.webhook_allowed_hosts) and not self.webhook_secret:
            raise ValueError(
                "completion webhooks (LEASEGATE_RUN_WEBHOOK_URL or "
                "LEASEGATE_WEBHOOK_ALLOWED_HOSTS) need LEASEGATE_WEBHOOK_SECRET to sign them"
            )
        return self

    @field_validator("internal_tenant")
    @classmethod
    def _check_internal_tenant(cls, value: str) -> str:
        return checked_tenant(value)

    @model_validator(mode="after")
    def _check_auth_required(self) -> Settings:
        if self.require_auth and not self.api_keys:
            raise ValueError("LEASEGATE_REQUIRE_AUTH is set but LEASEGATE_API_KEYS has no keys")
        return self

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
    def cooldowns(self) -> Cooldowns:
        return Cooldowns(
            rate_limit=self.cooldown_rate_limit_seconds,
            quota=self.cooldown_quota_seconds,
            wait_max=self.rate_limit_wait_max_seconds,
        )

    @property
    def redis_url_or_default(self) -> str:
        return self.redis_url or DEFAULT_REDIS_URL


def is_http_url(url: str) -> bool:
    """An absolute http(s) URL with a host."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)
