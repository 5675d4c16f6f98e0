"""Settings are validated with clear messages."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.settings import DEFAULT_REDIS_URL, Settings


def test_defaults() -> None:
    settings = Settings()
    assert settings.lease_ttl_seconds == 10
    assert settings.heartbeat_interval == pytest.approx(10 / 3)
    assert settings.redis_url_or_default == DEFAULT_REDIS_URL


def test_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEASEGATE_REDIS_URL", "redis://redis.internal:6380/2")
    monkeypatch.setenv("LEASEGATE_LEASE_TTL_SECONDS", "4")
    settings = Settings()
    assert settings.redis_url == "redis://redis.internal:6380/2"
    assert settings.heartbeat_interval == pytest.approx(4 / 3)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"lease_ttl_seconds": 0}, "greater than 0"),
        ({"lease_ttl_seconds": -1}, "greater than 0"),
        ({"lease_ttl_seconds": 5, "heartbeat_interval_seconds": 5}, "shorter than"),
        ({"redis_url": "http://localhost:6379"}, "must start with"),
        ({"redis_url": "redis://localhost:notaport"}, "invalid port"),
        ({"redis_url": "redis://:6379"}, "no host"),
        ({"redis_url": "unix://"}, "socket path"),
    ],
)
def test_invalid_settings_are_refused_clearly(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(**overrides)  # type: ignore[arg-type]


def test_require_auth_refuses_to_start_without_keys() -> None:
    with pytest.raises(ValidationError, match="LEASEGATE_REQUIRE_AUTH"):
        Settings(require_auth=True)
    assert Settings(require_auth=True, api_keys={"long-enough-key": "acme"}).require_auth


def test_api_keys_from_the_environment_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEASEGATE_API_KEYS", '{"key-number-one": "acme", "key-number-two": "b"}')
    assert Settings().api_keys == {"key-number-one": "acme", "key-number-two": "b"}
    monkeypatch.setenv("LEASEGATE_API_KEYS", '{"short": "acme"}')
    with pytest.raises(ValidationError, match="at least 8"):
        Settings()
    monkeypatch.setenv("LEASEGATE_API_KEYS", '{"long-enough-key": "bad tenant"}')
    with pytest.raises(ValidationError, match="tenant"):
        Settings()
    monkeypatch.setenv("LEASEGATE_API_KEYS", '{"long-enough-key": "acme"}')
    monkeypatch.setenv("LEASEGATE_INTERNAL_SECRET", "short")
    with pytest.raises(ValidationError, match="INTERNAL_SECRET"):
        Settings()
